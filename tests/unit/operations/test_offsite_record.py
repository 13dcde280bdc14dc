"""The record of what an off-site location holds (store/cache/remote-<16 hex>.record):
appended line by line, read back to the same state, and a suspect one is not trusted."""

from __future__ import annotations

from pathlib import Path

from cosmic_backup.operations.offsite_store import (
    RECORD_HEADER,
    RemoteRecord,
    _load_record,
    remote_index,
    remote_pack,
)

URL = "s3://bucket/app/web-1/"
UNTIL = "2026-12-10T00:00:00.000000Z"


def written(tmp_path: Path) -> RemoteRecord:
    path = tmp_path / "remote.record"
    path.write_text(f"{RECORD_HEADER} {URL}\n")
    record = RemoteRecord(path)
    record.add(remote_pack("a" * 64), 100, UNTIL)
    record.add(remote_pack("b" * 64), 200, "none")  # sent, then that run was cut
    record.add(remote_index("1" * 64), 10, UNTIL)  # another run's index, for its pack
    record.name_packs([remote_pack("a" * 64)])
    record.retain(remote_pack("a" * 64), "2026-12-20T00:00:00.000000Z")
    return record


def test_a_record_reads_back_as_it_was_written(tmp_path: Path) -> None:
    record = written(tmp_path)
    again = _load_record(record.path, URL)
    assert again is not None
    assert again.packs == {"a" * 64, "b" * 64}
    assert list(again.unindexed) == [remote_pack("b" * 64)]  # the next upload indexes it
    assert again.until[remote_pack("a" * 64)] == "2026-12-20T00:00:00.000000Z"
    assert again.sizes == record.sizes
    again.name_packs([remote_pack("b" * 64)])
    assert not _load_record(record.path, URL).unindexed  # type: ignore[union-attr]


def test_a_suspect_record_is_not_trusted(tmp_path: Path) -> None:
    record = written(tmp_path)
    assert _load_record(record.path, "s3://bucket/other/web-1/") is None  # another remote's
    assert _load_record(tmp_path / "missing.record", URL) is None
    with open(record.path, "a") as handle:
        handle.write("pack store/packs/cut-in-the-mid")  # a torn last line
    assert _load_record(record.path, URL) is None
