"""The whole path through the real CLI with the configuration component:
settings -> component -> compress -> encrypt -> MAC -> atomic write -> catalog -> list ->
verify MAC -> decrypt -> restore into a review folder."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

from tests.conftest import Project, clean_environ


def make_config(project: Project) -> None:
    (project.root / ".env").write_text("SECRET_TOKEN=s3cr3t-value\nDEBUG=false\n")
    config = project.root / "config"
    (config / "nested").mkdir(parents=True)
    (config / "app.yaml").write_text("name: cosmic\n")
    (config / "nested" / "db.yaml").write_text("pool: 5\n")


def listed(project: Project) -> list[dict]:
    result = project.run("--json", "list")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_config_backup_list_restore_round_trip(project: Project) -> None:
    # The single-file artifact's mode and bytes (test_files_chunked checks the store's).
    project.env["BACKUP_FORMAT"] = "single-file"
    make_config(project)
    backup = project.run("backup", "config", env={"APP_FEATURE_FLAG": "on"})
    assert backup.returncode == 0, backup.stderr
    assert "A NEW BACKUP KEY was created" in backup.stderr
    key_file = project.root / ".backup_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(key_file.read_text().strip()) >= 64  # 256 bits as hex

    [entry] = listed(project)
    assert entry["status"] == "ok" and entry["trust"] == "verified"
    assert entry["component"] == "config" and entry["source"]["files"] == 3
    artifact = project.backups / "config" / entry["artifact"]
    assert stat.S_IMODE(artifact.stat().st_mode) == 0o600
    assert b"cosmic" not in artifact.read_bytes()  # encrypted, not plain

    # Change the live files, then restore: nothing live is touched, a review folder appears.
    (project.root / "config" / "app.yaml").write_text("name: changed\n")
    (project.root / "config" / "nested" / "db.yaml").unlink()
    restore = project.run("restore", "config", "latest")
    assert restore.returncode == 0, restore.stderr
    review = project.root / "tmp" / "restores" / entry["id"]
    assert (review / "files" / "config" / "app.yaml").read_text() == "name: cosmic\n"
    assert (review / "files" / "config" / "nested" / "db.yaml").read_text() == "pool: 5\n"
    assert (review / "files" / ".env").read_text().startswith("SECRET_TOKEN=")
    assert "APP_FEATURE_FLAG=on" in (review / "environment.env").read_text()
    assert (project.root / "config" / "app.yaml").read_text() == "name: changed\n"
    assert str(review) in restore.stdout
    assert "config/app.yaml" in restore.stdout  # changed
    # and where in the review folder the differing files are
    assert "Files (in files/ of the review folder) different from now: config/app.yaml" in (
        restore.stdout
    )
    assert "Environment variables (in environment.env)" in restore.stdout
    assert "config/nested/db.yaml" in restore.stdout  # only in the backup
    assert "APP_FEATURE_FLAG" in restore.stdout  # a variable set then, not now
    assert "s3cr3t-value" not in restore.stdout + restore.stderr

    # A second restore never reuses (or overwrites) the first review folder.
    again = project.run("restore", "config", entry["id"])
    assert again.returncode == 0, again.stderr
    assert (review.parent / f"{entry['id']}-2" / "environment.env").exists()


def test_restore_into_a_non_empty_target_dir_is_refused(project: Project) -> None:
    make_config(project)
    assert project.run("backup", "config").returncode == 0
    target = project.root / "review"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    result = project.run("restore", "config", "latest", "--target-dir", str(target))
    assert result.returncode == 2
    assert "not empty" in result.stderr
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]


def test_backup_all_skips_what_is_not_configured(project: Project) -> None:
    make_config(project)
    result = project.run("backup", "all")
    assert result.returncode == 0, result.stderr
    assert "database  skipped" in result.stdout and "DATABASE_URL" in result.stdout
    assert "config    ok" in result.stdout
    assert [e["component"] for e in listed(project)] == ["config"]


def test_backup_all_fails_a_component_that_has_backups_but_is_unconfigured_now(
    project: Project,
) -> None:
    """Under cron a setting that stops reaching the run must not turn backups into skips."""
    make_config(project)
    (project.root / "uploads").mkdir()
    (project.root / "uploads" / "a.txt").write_text("a")
    assert project.run("backup", "files").returncode == 0
    (project.root / "uploads" / "a.txt").unlink()
    (project.root / "uploads").rmdir()  # now no file folder exists: files is unconfigured
    result = project.run("backup", "all")
    assert result.returncode == 3, result.stdout  # a partial failure
    [files_line] = [line for line in result.stdout.splitlines() if line.startswith("files")]
    assert "failed" in files_line and "This backup root has files backups" in files_line
    assert "database  skipped" in result.stdout  # never backed up here: still a skip
    assert "config    ok" in result.stdout
    # and a failure record, so the same day's status check raises the alarm
    status = project.run("--json", "status")
    assert status.returncode == 8
    [files] = [c for c in json.loads(status.stdout)["components"] if c["component"] == "files"]
    assert files["health"] == "FAILING" and "not configured now" in files["message"]


def test_json_summary_of_backup(project: Project) -> None:
    make_config(project)
    result = project.run("--json", "backup", "config")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    [config] = summary["components"]
    assert config["status"] == "ok" and config["id"].startswith("config-")
    assert summary["log_file"].startswith("logs/cosmic-backup-")


def test_seed_wrapper_scripts_work_from_the_project_root(project: Project, tmp_path: Path) -> None:
    init = project.run("init")
    assert init.returncode == 0, init.stderr
    make_config(project)
    for line in (".backup_key", "tmp/backups/", "logs/"):
        assert line in (project.root / ".gitignore").read_text().splitlines()
    assert "# retention_days = 30" in (project.root / "cosmic-backup.toml").read_text()
    repo_scripts = Path(__file__).resolve().parents[3] / "scripts"
    for name in ("backup.sh", "restore.sh", "recover.sh"):
        assert (project.root / "scripts" / name).read_text() == (repo_scripts / name).read_text()
    env = clean_environ({"COSMIC_BACKUP": f"{sys.executable} -m cosmic_backup"})
    elsewhere = tmp_path  # cron runs from anywhere: the wrapper moves to the project root
    backup = subprocess.run(
        [str(project.root / "scripts" / "backup.sh"), "config"],
        env=env,
        cwd=elsewhere,
        capture_output=True,
        text=True,
        check=False,
    )
    assert backup.returncode == 0, backup.stderr
    restore = subprocess.run(
        [str(project.root / "scripts" / "restore.sh"), "config", "latest"],
        env=env,
        cwd=elsewhere,
        capture_output=True,
        text=True,
        check=False,
    )
    assert restore.returncode == 0, restore.stderr
    assert "Extracted" in restore.stdout
    assert not (elsewhere / "tmp").exists()


def test_usage_errors_are_one_sentence_with_exit_code_2(project: Project) -> None:
    for args, expected in [
        (("backup", "everything"), "is not something to back up"),
        (("restore", "config", "2025-13-01"), "is not a real date"),
        (("restore", "config", "yesterday"), "is not 'latest', a date"),
        (("restore", "database", "latest", "--target-dir", "x"), "--target-dir is for"),
    ]:
        result = project.run(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert expected in result.stderr
        assert "Traceback" not in result.stderr
        assert result.stderr.count("\n") == 1  # one sentence, one line


def test_restore_with_nothing_to_restore_lists_what_exists(project: Project) -> None:
    result = project.run("restore", "config", "latest")
    assert result.returncode == 4
    assert "no good backup of the config" in result.stderr
    make_config(project)
    assert project.run("backup", "config").returncode == 0
    result = project.run("restore", "config", "2001-01-01")
    assert result.returncode == 4
    assert "Days with one:" in result.stderr


def test_a_failed_backup_leaves_a_failure_record_never_restored(project: Project) -> None:
    make_config(project)
    assert project.run("backup", "config").returncode == 0
    bad = project.run("backup", "config", env={"BACKUP_KEY_COMMAND": "false"})
    assert bad.returncode == 5
    assert "BACKUP_KEY_COMMAND failed" in bad.stderr
    entries = listed(project)
    assert [e["status"] for e in entries] == ["ok", "failed"]
    assert "BACKUP_KEY_COMMAND failed" in entries[1]["error"]
    assert entries[1]["log_file"].startswith("logs/")
    # A failure record is never chosen by `latest`.
    restore = project.run("restore", "config", "latest")
    assert restore.returncode == 0
    assert entries[0]["id"] in restore.stdout


def test_logs_carry_the_run_id_and_json_lines_parse(project: Project) -> None:
    make_config(project)
    assert project.run("backup", "config").returncode == 0
    assert project.run("--log-format", "json", "backup", "config").returncode == 0
    [log] = list((project.root / "logs").iterdir())
    assert (log.stat().st_mode & 0o777) == 0o600
    assert ((project.root / "logs").stat().st_mode & 0o777) == 0o700
    lines = log.read_text().splitlines()
    text_lines = [line for line in lines if not line.startswith("{")]
    json_lines = [json.loads(line) for line in lines if line.startswith("{")]
    assert text_lines and json_lines
    text_ids = {line.split("[", 1)[1].split("]", 1)[0] for line in text_lines}
    assert len(text_ids) == 1  # one run, one id on every line
    assert {entry["run_id"] for entry in json_lines} - text_ids
    assert all({"time", "level", "run_id", "message"} <= set(entry) for entry in json_lines)


def test_a_remote_that_cannot_be_used_is_not_silently_ignored(project: Project) -> None:
    make_config(project)
    result = project.run("backup", "config", env={"BACKUP_REMOTE": "s3://bucket/prefix"})
    assert result.returncode == 0, result.stderr  # the local backup is good
    assert "the off-site copy of config-" in result.stderr
    assert "credentials" in result.stderr  # none are set: that is the sentence


def test_wrappers_without_a_recorded_python_try_the_venv_then_path(
    project: Project, tmp_path: Path
) -> None:
    """The seed's wrappers as written (no `init` here): ./.venv, then PATH, else exit 127."""
    repo_scripts = Path(__file__).resolve().parents[3] / "scripts"
    (project.root / "scripts").mkdir()
    for name in ("backup.sh", "restore.sh"):
        (project.root / "scripts" / name).write_text((repo_scripts / name).read_text())
        (project.root / "scripts" / name).chmod(0o755)
    entry_point = Path(sys.executable).parent / "cosmic-backup"

    def under_cron(wrapper: str, path: str = "/usr/bin:/bin") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["env", "-i", f"HOME={tmp_path}", f"PATH={path}", f"./scripts/{wrapper}", "--help"],
            cwd=project.root,
            capture_output=True,
            text=True,
            check=False,
        )

    missing = under_cron("backup.sh")
    assert missing.returncode == 127 and "run 'cosmic-backup init'" in missing.stderr
    assert "No module named" not in missing.stderr
    on_path = tmp_path / "bin"
    on_path.mkdir()
    (on_path / "cosmic-backup").symlink_to(entry_point)
    assert under_cron("restore.sh", f"{on_path}:/usr/bin:/bin").returncode == 0
    (project.root / ".venv" / "bin").mkdir(parents=True)
    (project.root / ".venv" / "bin" / "cosmic-backup").symlink_to(entry_point)
    found = under_cron("backup.sh")
    assert found.returncode == 0 and "cosmic-backup backup" in found.stdout, found.stderr
