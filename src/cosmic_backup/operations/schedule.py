"""`schedule`: ready-to-use entries for the recommended schedule.

Database daily, files weekly, configuration monthly (the original guide's schedule), a
weekly restore test of the latest backups (`verify --restore-test all`, into a throwaway
server), and a daily `status` check whose non-zero exit makes cron mail, systemd or
Kubernetes alert.
Entries run from the project root and use the seed's wrappers.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cosmic_backup.errors import OperationFailed
from cosmic_backup.operations.init import INSTALLATION_FILE


@dataclass(frozen=True)
class Job:
    name: str  # e.g. "database"
    argv: list[str]  # relative to the project root
    cron: str  # minute hour day-of-month month day-of-week
    on_calendar: str  # systemd OnCalendar
    description: str


def jobs(status_command: list[str] | None = None, report: str | None = None) -> list[Job]:
    """The schedule; with `report` (a file), a daily `report --html` after the status check."""
    # --alert: an overdue backup reaches BACKUP_NOTIFY_URL even when no backup ran
    status = status_command or [sys.executable, "-m", "cosmic_backup", "status", "--alert"]
    program = status[: status.index("status")]
    return [
        Job(
            "database",
            ["./scripts/backup.sh", "database", "--tag", "scheduled"],
            "15 2 * * *",
            "*-*-* 02:15:00",
            "daily database backup",
        ),
        Job(
            "files",
            ["./scripts/backup.sh", "files", "--tag", "scheduled"],
            "15 3 * * 0",
            "Sun *-*-* 03:15:00",
            "weekly files backup",
        ),
        Job(
            "config",
            ["./scripts/backup.sh", "config", "--tag", "scheduled"],
            "15 4 1 * *",
            "*-*-01 04:15:00",
            "monthly configuration backup",
        ),
        Job(
            "restore-test",
            [*program, "verify", "--restore-test", "all"],
            "30 5 * * 0",
            "Sun *-*-* 05:30:00",
            "weekly restore test of the latest backups into a throwaway server",
        ),
        Job(
            "status",
            status,
            "0 9 * * *",
            "*-*-* 09:00:00",
            "daily check that every backup is recent (non-zero exit when not)",
        ),
        *([_report_job(program, report)] if report else []),
    ]


def _report_job(program: list[str], report: str) -> Job:
    return Job(
        "report",
        [*program, "report", "--html", report],
        "10 9 * * *",
        "*-*-* 09:10:00",
        "daily HTML report of the backups",
    )


def wrappers_problem(root: Path) -> str | None:
    """Why the backup entries would not run this installation under cron, if they would not.

    They call ./scripts/backup.sh, which runs the Python recorded by `init`: cron's PATH
    (/usr/bin:/bin) finds no virtualenv or pipx install.
    """
    if not (root / "scripts" / "backup.sh").is_file():
        return (
            "scripts/backup.sh does not exist, so the backup entries would fail; "
            "run 'cosmic-backup init' first."
        )
    recorded = root / INSTALLATION_FILE
    if recorded.is_file() and recorded.read_text().strip() == sys.executable:
        return None
    if not recorded.is_file() and (root / ".venv" / "bin" / "cosmic-backup").is_file():
        return None  # the wrappers' next choice
    return (
        f"scripts/backup.sh would not run this cosmic-backup ({sys.executable}) under cron, "
        f"since {INSTALLATION_FILE} does not name it; run 'cosmic-backup init' to record it."
    )


def crontab(root: Path, report: str | None = None) -> str:
    lines = [
        f"# cosmic-backup: recommended schedule for {root} (install with crontab -e)",
        "# Output is mailed by cron (set MAILTO); details are in the project's ./logs.",
        "# cron's environment is almost empty: cosmic-backup reads DATABASE_URL (and its other",
        "# settings, never the key) from the app's .env in the project root when the",
        "# environment has none; keep .env private (chmod 600 .env: doctor warns otherwise).",
        "# The key comes from the key file (.backup_key), or set BACKUP_KEY above.",
        "# A backup that finds another one still running waits for it instead of failing:",
        "BACKUP_WAIT=1",
    ]
    # cron mails whatever a job prints: the daily check speaks only when something is wrong
    status = [sys.executable, "-m", "cosmic_backup", "status", "--quiet", "--alert"]
    for job in jobs(status, report):
        command = " ".join(shlex.quote(part) for part in job.argv)
        line = f"cd {shlex.quote(str(root))} && {command}"
        lines.append(f"# {job.description}")
        lines.append(f"{job.cron} {line.replace('%', chr(92) + '%')}")  # cron: % is a newline
    return "\n".join(lines) + "\n"


def systemd_units(root: Path, report: str | None = None) -> dict[str, str]:
    """File name -> content of a oneshot service and a timer per job."""
    units = {}
    for job in jobs(report=report):
        unit = f"cosmic-backup-{job.name}"
        exec_start = " ".join(
            _systemd_word(part if not part.startswith("./") else str(root / part[2:]))
            for part in job.argv
        )
        units[f"{unit}.service"] = (
            "[Unit]\n"
            f"Description=cosmic-backup: {job.description}\n"
            "Wants=network-online.target\n"
            "After=network-online.target\n\n"
            "[Service]\n"
            "Type=oneshot\n"
            f"WorkingDirectory={_systemd_path(root)}\n"
            f"ExecStart={exec_start}\n"
            "Environment=BACKUP_WAIT=1\n"
            "# DATABASE_URL is read from the app's .env; this optional file (mode 0600)\n"
            "# is for settings of the scheduled runs alone (e.g. BACKUP_KEY):\n"
            f"EnvironmentFile=-{_systemd_path(root / '.env.backup')}\n"
        )
        units[f"{unit}.timer"] = (
            "[Unit]\n"
            f"Description=cosmic-backup: {job.description}\n\n"
            "[Timer]\n"
            f"OnCalendar={job.on_calendar}\n"
            "Persistent=true\n"
            "RandomizedDelaySec=300\n\n"
            "[Install]\n"
            "WantedBy=timers.target\n"
        )
    return units


def _systemd_path(path: Path) -> str:
    """A path as a unit file value: % starts a specifier, so it is doubled."""
    return str(path).replace("%", "%%")


def _systemd_word(part: str) -> str:
    """One ExecStart word: specifiers and $ escaped, quoted when it holds blanks or quotes."""
    part = part.replace("%", "%%").replace("$", "$$")
    if any(c.isspace() or c in "\"'\\;" for c in part):
        return '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return part


def install_systemd(root: Path, folder: Path, report: str | None = None) -> list[Path]:
    """Write the units into `folder` (e.g. /etc/systemd/system)."""
    written = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in systemd_units(root, report).items():
            path = folder / name
            path.write_text(text)
            written.append(path)
    except OSError as exc:
        raise OperationFailed(
            f"Could not write the systemd units into {folder}: {exc.strerror or exc}; "
            "run as root for /etc/systemd/system, or pick a folder you can write."
        ) from exc
    return written


def kubernetes(
    workdir: str = "/app",
    image: str = "registry.example.com/your-app:latest",
    report: str | None = None,
) -> str:
    """One CronJob per job; the app's image must contain cosmic-backup and the wrappers."""
    backups = PurePosixPath(workdir) / "tmp" / "backups"
    logs = PurePosixPath(workdir) / "logs"
    documents = []
    for job in jobs(["cosmic-backup", "status", "--alert"], report):
        command = ", ".join(_yaml(part) for part in job.argv)
        documents.append(f"""apiVersion: batch/v1
kind: CronJob
metadata:
  name: cosmic-backup-{job.name}
  labels:
    app.kubernetes.io/name: cosmic-backup
spec:
  schedule: "{job.cron}"
  concurrencyPolicy: Forbid
  successfulJobsHistoryLimit: 3
  failedJobsHistoryLimit: 5
  jobTemplate:
    spec:
      backoffLimit: 1
      template:
        spec:
          restartPolicy: Never
          containers:
            - name: cosmic-backup
              image: {_yaml(image)}
              workingDir: {_yaml(workdir)}
              command: [{command}]
              env:
                - name: BACKUP_WAIT  # wait for another run's lock instead of failing
                  value: "1"
              envFrom:
                - secretRef:
                    name: cosmic-backup  # DATABASE_URL, BACKUP_KEY
              volumeMounts:
                - name: backups
                  mountPath: {_yaml(str(backups))}
                - name: logs
                  mountPath: {_yaml(str(logs))}
          volumes:
            - name: backups
              persistentVolumeClaim:
                claimName: cosmic-backup-backups
            - name: logs
              persistentVolumeClaim:
                claimName: cosmic-backup-logs
""")
    return "---\n".join(documents)


def _yaml(text: str) -> str:
    """A YAML scalar that stays one string whatever it holds (JSON strings are valid YAML)."""
    return json.dumps(text)
