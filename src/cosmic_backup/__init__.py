"""cosmic-backup: encrypted, compressed backups of a web app's database, files and configuration."""

__version__ = "0.1.0"
