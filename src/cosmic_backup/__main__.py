from cosmic_backup.cli.main import run

run()
