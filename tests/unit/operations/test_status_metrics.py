"""Status health and the metrics textfile, from catalog entries made in memory."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cosmic_backup.operations.metrics import component_values, render, write_atomically
from cosmic_backup.operations.status import component_status, exit_code
from cosmic_backup.states import Health, Trust
from tests.unit.operations.helpers import NOW, entry

DAY = timedelta(days=1)
GRACE = timedelta(hours=6)


@pytest.mark.parametrize(
    ("entries", "configured", "health"),
    [
        ([entry(0.5)], True, Health.OK),
        ([entry(2)], True, Health.OVERDUE),
        ([entry(0.5), entry(0.1, ok=False)], True, Health.FAILING),
        ([entry(0.1, ok=False)], True, Health.FAILING),
        ([], True, Health.NEVER),
        ([], False, Health.NOT_CONFIGURED),
        ([entry(3), entry(0.1, tags=("pre-restore",))], True, Health.OVERDUE),  # copies don't count
        ([entry(1.2)], True, Health.OK),  # within the day's interval plus 6 hours' grace
        ([entry(1.3)], True, Health.OVERDUE),
        ([entry(3)], False, Health.OVERDUE),  # backed up once, then unconfigured: still watched
        ([entry(0.5, ok=False, tags=("pre-restore",))], True, Health.NEVER),
    ],
)
def test_each_health_state(entries: list, configured: bool, health: str) -> None:
    status = component_status(
        entries, "database", NOW, interval=DAY, grace=GRACE, configured=configured
    )
    assert status.health == health
    assert exit_code([status]) == (0 if health in (Health.OK, Health.NOT_CONFIGURED) else 8)


def test_status_json_shape_is_stable() -> None:
    status = component_status(
        [entry(3, size=10), entry(0.1, ok=False)],
        "files",
        NOW,
        interval=7 * DAY,
        grace=GRACE,
        configured=True,
    )
    data = status.to_dict()
    assert sorted(data) == [
        "backups",
        "component",
        "configured",
        "expected_interval_seconds",
        "health",
        "last_failure",
        "last_good",
        "last_restore_test",
        "message",
        "total_size",
    ]
    assert sorted(data["last_good"]) == ["age_seconds", "finished_at", "id", "mode", "stored_size"]
    assert sorted(data["last_failure"]) == ["at", "error", "id"]
    assert data["total_size"] == 10 and data["backups"] == 2
    json.dumps(data)


def test_metrics_textfile_parses_and_is_written_atomically(tmp_path: Path) -> None:
    values = {
        "database": component_values([entry(1, size=123), entry(0.5, ok=False)]),
        "files": component_values([]),
    }
    text = render(values)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    status = {s.labels["component"]: s.value for s in families["cosmic_backup_last_status"].samples}
    assert status == {"database": 0.0}
    size = families["cosmic_backup_last_size_bytes"].samples[0]
    assert size.value == 123
    stamp = families["cosmic_backup_last_success_timestamp_seconds"].samples[0].value
    assert abs(stamp - (NOW - DAY + timedelta(minutes=2)).timestamp()) < 1
    target = tmp_path / "textfile" / "cosmic_backup.prom"
    write_atomically(target, text)
    first = target.stat().st_ino
    write_atomically(target, text)
    assert target.stat().st_ino != first  # replaced by a rename, never rewritten in place
    assert target.read_text() == text
    assert target.stat().st_mode & 0o777 == 0o644  # node_exporter runs as another user
    assert sorted(p.name for p in target.parent.iterdir()) == ["cosmic_backup.prom"]


def test_metrics_never_write_through_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    target = tmp_path / "cosmic_backup.prom"
    (tmp_path / f".cosmic_backup.prom.{os.getpid()}.tmp").symlink_to(victim)
    write_atomically(target, "# nothing\n")
    assert victim.read_text() == "precious"
    assert target.read_text() == "# nothing\n" and not target.is_symlink()


def test_metrics_ignore_tampered_backups_and_pre_restore_copies() -> None:
    values = component_values(
        [
            entry(3, size=5),
            entry(2, size=7, trust=Trust.TAMPERED),
            entry(1, size=9, tags=("pre-restore",)),
        ]
    )
    assert values["cosmic_backup_last_size_bytes"] == 5
    assert values["cosmic_backup_backups"] == 3
