"""One contract suite, run unchanged against every `Store` (restic's backend tests): the
local folder and an S3 bucket on a real SeaweedFS. A new backend passes it with one more
fixture parameter."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cosmic_backup.storage.base import ObjectInfo, Store, StoreNotFound
from cosmic_backup.storage.local import LocalStore
from cosmic_backup.storage.s3 import MIN_PART_SIZE, S3Store, make_client, parse_remote
from tests.s3server import S3Server


@pytest.fixture(params=["local", "s3"])
def store(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Store]:
    if request.param == "local":
        yield LocalStore(tmp_path / "store")
        return
    server: S3Server = request.getfixturevalue("s3_server")
    url: str = request.getfixturevalue("remote_url")
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    # The smallest parts S3 allows, so a 12 MiB object is a real three-part upload.
    yield S3Store(parse_remote(url, "host-a"), client=make_client(), part_size=MIN_PART_SIZE)


def _read(store: Store, name: str) -> bytes:
    with store.open_read(name) as handle:
        return handle.read()


def test_put_then_read_stat_and_list(store: Store) -> None:
    info = store.put("database/one.bin", io.BytesIO(b"hello world"))
    assert info == ObjectInfo("database/one.bin", 11)
    assert _read(store, "database/one.bin") == b"hello world"
    assert store.stat("database/one.bin") == ObjectInfo("database/one.bin", 11)
    assert store.list("database/") == [ObjectInfo("database/one.bin", 11)]


def test_put_reads_from_the_current_position_and_replaces(store: Store) -> None:
    source = io.BytesIO(b"skip:kept")
    source.seek(5)
    store.put("files/a", source)
    assert _read(store, "files/a") == b"kept"
    store.put("files/a", io.BytesIO(b"replaced, longer"))
    assert _read(store, "files/a") == b"replaced, longer"
    assert [info.name for info in store.list("files/")] == ["files/a"]


def test_empty_object(store: Store) -> None:
    store.put("config/empty", io.BytesIO(b""))
    assert store.stat("config/empty").size == 0
    assert _read(store, "config/empty") == b""


def test_large_object_in_parts_round_trips(store: Store) -> None:
    data = os.urandom(2 * MIN_PART_SIZE + 12345)
    info = store.put("database/big", io.BytesIO(data))
    assert info.size == len(data)
    with store.open_read("database/big") as handle:
        assert handle.read() == data
        handle.seek(len(data) - 5)  # the reader is seekable: the MAC pass reads twice
        assert handle.read() == data[-5:]


def test_open_write_commits_only_a_finished_block(store: Store) -> None:
    with store.open_write("database/written") as sink:
        sink.write(b"part one, ")
        sink.write(b"part two")
    assert _read(store, "database/written") == b"part one, part two"

    with pytest.raises(RuntimeError), store.open_write("database/broken") as sink:
        sink.write(b"half of it")
        raise RuntimeError("the writer died")
    assert [info.name for info in store.list("database/")] == ["database/written"]
    with pytest.raises(StoreNotFound):
        store.stat("database/broken")


def test_not_found(store: Store) -> None:
    with pytest.raises(StoreNotFound):
        store.open_read("database/missing")
    with pytest.raises(StoreNotFound):
        store.stat("database/missing")
    store.delete("database/missing")  # deleting what is gone is not an error


def test_delete(store: Store) -> None:
    store.put("files/x", io.BytesIO(b"1"))
    store.put("files/y", io.BytesIO(b"2"))
    store.delete("files/x")
    store.delete("files/x")
    assert [info.name for info in store.list("files/")] == ["files/y"]
    with pytest.raises(StoreNotFound):
        store.open_read("files/x")


def test_list_is_sorted_and_filters_by_prefix(store: Store) -> None:
    for name in ("database/b.json", "database/a.enc", "database/a.json", "databases/z"):
        store.put(name, io.BytesIO(name.encode()))
    store.put("config/c", io.BytesIO(b"c"))
    assert [i.name for i in store.list("database/")] == [
        "database/a.enc",
        "database/a.json",
        "database/b.json",
    ]
    assert [i.name for i in store.list("database/a")] == ["database/a.enc", "database/a.json"]
    assert store.list("files/") == []


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside", "database/../../x", ""])
def test_unsafe_names_are_refused(store: Store, name: str) -> None:
    with pytest.raises(ValueError, match="unsafe object name"):
        store.put(name, io.BytesIO(b"x"))
    with pytest.raises(ValueError, match="unsafe object name"):
        store.stat(name)


def test_a_reader_is_private_to_this_user(store: Store) -> None:
    store.put("database/secret", io.BytesIO(b"sealed bytes"))
    with store.open_read("database/secret") as handle:
        # a download is spooled to a 0600 file, never one others could read
        assert os.fstat(handle.fileno()).st_mode & 0o077 == 0


def test_put_tells_its_progress_of_every_byte_stored(store: Store) -> None:
    body = os.urandom(3 * 1024 * 1024 + 5)
    moved: list[int] = []
    store.put("files/a.tar.gz.enc", io.BytesIO(body), moved.append)
    assert sum(moved) == len(body) and all(n > 0 for n in moved)
    assert _read(store, "files/a.tar.gz.enc") == body
