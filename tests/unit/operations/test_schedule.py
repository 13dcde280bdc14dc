"""The schedule in its three forms: crontab lines, systemd units, Kubernetes CronJobs."""

from __future__ import annotations

import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from croniter import croniter

from cosmic_backup.errors import OperationFailed
from cosmic_backup.operations.init import wrapper_text
from cosmic_backup.operations.schedule import (
    crontab,
    install_systemd,
    jobs,
    kubernetes,
    systemd_units,
)
from tests.unit.operations.helpers import NOW


def test_crontab_lines_parse_and_follow_the_recommended_schedule() -> None:
    text = crontab(Path("/srv/my app"))
    entries = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert entries[0] == "BACKUP_WAIT=1"  # an environment line: overlapping runs wait
    lines = entries[1:]
    assert len(lines) == 5
    for line in lines:
        fields = line.split(maxsplit=5)
        assert croniter.is_valid(" ".join(fields[:5]))
        assert "cd '/srv/my app' && " in line
    start = NOW.replace(tzinfo=None)
    database, files, _config, restore_test, _status = (
        croniter(" ".join(line.split()[:5]), start) for line in lines
    )
    first, second = database.get_next(), database.get_next()
    assert second - first == 86400
    first, second = files.get_next(), files.get_next()
    assert second - first == 7 * 86400
    assert croniter(" ".join(lines[2].split()[:5]), start).get_next(datetime).day == 1
    first, second = restore_test.get_next(), restore_test.get_next()
    assert second - first == 7 * 86400  # a weekly restore test
    assert lines[3].endswith(" -m cosmic_backup verify --restore-test all")
    assert "./scripts/backup.sh database --tag scheduled" in lines[0]
    assert lines[4].endswith(" -m cosmic_backup status --quiet --alert")  # cron mails any output


def test_systemd_units_structure() -> None:
    units = systemd_units(Path("/srv/app"))
    assert len(units) == 10
    assert "verify --restore-test all" in units["cosmic-backup-restore-test.service"]
    assert "OnCalendar=Sun *-*-* 05:30:00" in units["cosmic-backup-restore-test.timer"]
    service = units["cosmic-backup-database.service"]
    assert "ExecStart=/srv/app/scripts/backup.sh database --tag scheduled" in service
    assert "Type=oneshot" in service and "WorkingDirectory=/srv/app" in service
    assert "OnCalendar=*-*-* 02:15:00" in units["cosmic-backup-database.timer"]
    for name, text in units.items():
        sections = [line for line in text.splitlines() if line.startswith("[")]
        assert sections == (
            ["[Unit]", "[Service]"]
            if name.endswith(".service")
            else ["[Unit]", "[Timer]", "[Install]"]
        )


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    # A root with a blank and a % (a systemd specifier) proves the quoting and escaping.
    root = tmp_path / "my app%1"
    (root / "scripts").mkdir(parents=True)
    wrapper = root / "scripts" / "backup.sh"
    wrapper.write_text(wrapper_text("backup.sh"))
    wrapper.chmod(0o755)
    written = install_systemd(root, tmp_path / "units")
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *map(str, written)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    complaints = [line for line in result.stderr.splitlines() if "cosmic-backup-" in line]
    assert complaints == []
    calendar = subprocess.run(
        ["systemd-analyze", "calendar", *(job.on_calendar for job in jobs())],
        capture_output=True,
        text=True,
        check=False,
    )
    assert calendar.returncode == 0, calendar.stderr


def test_cron_escapes_percent_signs() -> None:
    [line] = [line for line in crontab(Path("/srv/a%b")).splitlines() if " status" in line]
    assert "cd /srv/a\\%b && " in line  # unescaped, cron would cut the command there


def test_installing_units_into_a_folder_that_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OperationFailed, match="Could not write the systemd units"):
        install_systemd(Path("/srv/app"), blocker / "units")


def test_kubernetes_cronjobs_parse() -> None:
    documents = list(yaml.safe_load_all(kubernetes("/app", "example/app:1")))
    assert [d["metadata"]["name"] for d in documents] == [
        f"cosmic-backup-{job.name}" for job in jobs()
    ]
    for document in documents:
        assert document["kind"] == "CronJob" and document["apiVersion"] == "batch/v1"
        assert croniter.is_valid(document["spec"]["schedule"])
        spec = document["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        container = spec["containers"][0]
        assert container["image"] == "example/app:1" and container["workingDir"] == "/app"
        assert document["spec"]["concurrencyPolicy"] == "Forbid"
    assert documents[0]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0][
        "command"
    ] == ["./scripts/backup.sh", "database", "--tag", "scheduled"]
    # YAML-special characters in the values stay part of one string
    [odd, *_] = yaml.safe_load_all(kubernetes("/srv/my app #1", "example/app:1 # x"))
    container = odd["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["workingDir"] == "/srv/my app #1"
    assert container["image"] == "example/app:1 # x"
    assert container["volumeMounts"][0]["mountPath"] == "/srv/my app #1/tmp/backups"


def test_a_daily_report_goes_next_to_the_status_check_when_asked() -> None:
    assert [job.name for job in jobs()][-1] == "status"  # not unless asked
    text = crontab(Path("/srv/app"), "/var/www/backups/report.html")
    [line] = [line for line in text.splitlines() if " report --html " in line]
    assert croniter.is_valid(" ".join(line.split()[:5]))
    assert line.endswith(" -m cosmic_backup report --html /var/www/backups/report.html")
    units = systemd_units(Path("/srv/app"), "/var/www/r.html")
    assert "report --html /var/www/r.html" in units["cosmic-backup-report.service"]
    assert "OnCalendar=*-*-* 09:10:00" in units["cosmic-backup-report.timer"]
    documents = list(yaml.safe_load_all(kubernetes(report="/app/report.html")))
    names = [document["metadata"]["name"] for document in documents]
    assert names[-2:] == ["cosmic-backup-status", "cosmic-backup-report"]
