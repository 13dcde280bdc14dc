"""Shared pieces of the chunk store tests: a store on a temporary folder with small packs
(1 MiB, so a few MB make several packs), payloads that are half random, half repetitive,
and the real openssl and gunzip."""

from __future__ import annotations

import io
import random
import subprocess
from pathlib import Path

from cosmic_backup.chunkstore import ChunkListRecord, ChunkStore
from tests.unit.format import FAST, KEY, enc_options

MiB = 1024 * 1024
SMALL_PACKS = 1 * MiB
DB_ID = "database-20261124T020000Z"


def make_store(root: Path, pack_target: int = SMALL_PACKS) -> ChunkStore:
    return ChunkStore.open(root, KEY, wrap_iterations=FAST, pack_target=pack_target)


def backup_id(number: int, component: str = "database") -> str:
    return f"{component}-20261124T02{number // 60:02d}{number % 60:02d}Z"


def payload(size: int, seed: int = 0) -> bytes:
    """Half random bytes (photos, compressed tables), half repetitive rows."""
    rng = random.Random(seed)
    random_part = rng.randbytes(size // 2)
    row = b"%d\tsome user name\t2026-11-24 02:00:00\tan ordinary row of a table\n"
    rows = b"".join(row % (seed * 1_000_000 + n) for n in range(size // 40 + 1))
    return random_part + rows[: size - len(random_part)]


def write(
    store: ChunkStore, data: bytes, backup: str = DB_ID, **options: object
) -> ChunkListRecord:
    return store.write_payload(io.BytesIO(data), backup.split("-")[0], backup, **options)  # type: ignore[arg-type]


def read(
    store: ChunkStore, record: ChunkListRecord, backup: str = DB_ID, *, read_ahead: bool = False
) -> bytes:
    return b"".join(store.read_payload(record, backup, read_ahead=read_ahead))


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def openssl_decrypt(stored_path: Path, key_file: Path, iterations: int = FAST) -> bytes:
    result = subprocess.run(
        [
            "openssl",
            "enc",
            "-d",
            *enc_options(iterations),
            "-pass",
            f"file:{key_file}",
            "-in",
            str(stored_path),
        ],
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


def gunzip(data: bytes) -> bytes:
    result = subprocess.run(["gunzip"], input=data, capture_output=True, check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


__all__ = ["KEY"]
