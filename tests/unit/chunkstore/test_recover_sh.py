"""scripts/recover.sh (issue 19 item 7): a format 2 backup's payload rebuilt by POSIX sh,
openssl, gunzip and POSIX utilities alone, with Python off PATH; every object checked by
its MAC first, and a changed byte, a missing pack or a wrong key refused by name with no
byte of payload written. Every external command it runs logs its argv, which must hold no
secret (the passphrase, the data key, or a key derived from either)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pytest

from cosmic_backup.chunkstore import ChunkListRecord, ChunkStore
from cosmic_backup.chunkstore.index_objects import read_index_object, write_index_object
from cosmic_backup.format.index_text import ChunkPlace
from tests.unit.chunkstore import MiB, files_under, make_store, payload, write
from tests.unit.format import PASSPHRASE, write_key_file

TOOLS = ("openssl", "gzip", "gunzip", "dd", "od", "awk", "sed", "sort", "cat", "printf")
TOOLS += ("mktemp", "rm")
SHELL = shutil.which("dash") or "/bin/sh"
SCRIPT = resources.files("cosmic_backup").joinpath("templates", "recover.sh")


@dataclass
class Project:
    root: Path
    store: ChunkStore
    argv_log: Path
    bin: Path

    @property
    def backups(self) -> Path:
        return self.root / "tmp" / "backups"


def tool_folder(folder: Path, argv_log: Path) -> Path:
    """A PATH of the allowed tools only, each a shim that logs its argv, then runs it."""
    folder.mkdir()
    for tool in TOOLS:
        real = shutil.which(tool)
        assert real, f"{tool} is not installed"
        shim = folder / tool
        shim.write_text(f'#!/bin/sh\nprintf "%s\\n" "{tool} $*" >> {argv_log}\nexec {real} "$@"\n')
        shim.chmod(0o755)
    return folder


@pytest.fixture
def project(tmp_path: Path) -> Project:
    root = tmp_path / "app"
    root.mkdir()
    write_key_file(root)
    store = make_store(root / "tmp" / "backups")
    argv_log = tmp_path / "argv.log"
    return Project(root, store, argv_log, tool_folder(tmp_path / "bin", argv_log))


def write_manifest(project: Project, backup_id: str, record: ChunkListRecord) -> Path:
    """A format 2 manifest as docs/format.md describes it (no command writes one yet)."""
    component = backup_id.split("-")[0]
    body = {
        "format_version": 2,
        "id": backup_id,
        "component": component,
        "status": "ok",
        "artifact": None,
        "artifact_mac": None,
        "chunk_list": record.manifest_field(),
        "data_key": project.store.data_key.fingerprint,
        "plaintext_size": record.plaintext_size,
        "plaintext_sha256": record.plaintext_sha256,
        "stored_size": record.added_bytes,
        "mac": "0" * 64,
    }
    path = project.backups / component / f"{backup_id}.manifest.json"
    path.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    return path


def back_up(project: Project, backup_id: str, data: bytes) -> None:
    write_manifest(project, backup_id, write(project.store, data, backup_id))


def recover(project: Project, backup_id: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [SHELL, str(SCRIPT), backup_id],
        cwd=project.root,
        env={"PATH": str(project.bin), **env},
        capture_output=True,
        check=False,
        timeout=120,
    )


def tar_of(files: dict[str, bytes]) -> bytes:
    sink = io.BytesIO()
    with tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return sink.getvalue()


def secrets_of(project: Project) -> list[str]:
    key = project.store.data_key
    labels = ("pack-mac", "index-mac", "list-mac", "chunk-id")
    return [PASSPHRASE.decode(), key.passphrase.decode()] + [key.derive(x).hex() for x in labels]


def assert_no_secret_in_argv(project: Project) -> None:
    logged = project.argv_log.read_text().lower()
    assert "openssl dgst" in logged and "openssl enc -d" in logged
    for secret in secrets_of(project):
        assert secret.lower() not in logged


COMPONENTS = {
    # A custom-format dump's bytes are opaque to the store: any bytes stand for one.
    "database-20261124T020000Z": b"PGDMP\x01\x0f\x00" + payload(3 * MiB, seed=1),
    "files-20261124T020000Z": tar_of(
        {"uploads/a.jpg": payload(2 * MiB, seed=2), "uploads/empty": b"", "b.txt": b"hi\n"}
    ),
    "config-20261124T020000Z": tar_of(
        {"files/app/.env.production": b"SECRET=1\n", "environment.env": b"A=1\nB=2\n"}
    ),
}


@pytest.mark.parametrize("backup_id", sorted(COMPONENTS))
def test_recover_sh_writes_each_components_payload_with_python_off_path(
    project: Project, backup_id: str
) -> None:
    assert shutil.which("python3", path=str(project.bin)) is None
    data = COMPONENTS[backup_id]
    back_up(project, backup_id, data)
    result = recover(project, backup_id)
    assert result.returncode == 0, result.stderr.decode()
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(data).digest()
    assert result.stdout == data
    assert result.stderr == b""
    assert_no_secret_in_argv(project)


def test_recover_sh_reads_backup_dir_and_key_file_from_the_environment(
    project: Project, tmp_path: Path
) -> None:
    data = payload(1 * MiB, seed=4)
    back_up(project, "database-20261124T030000Z", data)
    moved_root = tmp_path / "elsewhere"
    project.backups.rename(moved_root)
    moved_key = tmp_path / "the.key"
    (project.root / ".backup_key").rename(moved_key)
    result = recover(
        project,
        "database-20261124T030000Z",
        BACKUP_DIR=str(moved_root),
        BACKUP_KEY_FILE=str(moved_key),
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == data


def flip_a_byte(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    position = len(data) // 2 if at is None else at
    data[position] ^= 0x01
    path.write_bytes(bytes(data))


def damaged_object(project: Project, kind: str) -> Path:
    if kind == "pack":
        # A pack in the middle: the first holds the payload's first chunks (which would be
        # written if packs were checked only when reached), the last the entry text.
        packs = project.store.loaded_index.index.packs
        assert len(packs) >= 3
        return project.store.layout.pack(packs[-2])
    if kind == "index":
        return files_under(project.backups / "store" / "index")[0]
    return project.backups / "database" / "database-20261124T020000Z.chunks"


@pytest.mark.parametrize("kind", ["pack", "index", "list"])
def test_a_changed_byte_is_refused_naming_the_object_and_nothing_is_written(
    project: Project, kind: str
) -> None:
    backup_id = "database-20261124T020000Z"
    back_up(project, backup_id, random.Random(5).randbytes(4 * MiB))
    target = damaged_object(project, kind)
    flip_a_byte(target)
    result = recover(project, backup_id)
    assert result.returncode == 3
    message = result.stderr.decode()
    assert str(target.relative_to(project.root)) in message and "fails its MAC check" in message
    assert "Traceback" not in message and message.count("\n") == 1
    assert result.stdout == b""


def test_a_missing_pack_is_refused_before_any_byte_is_written(project: Project) -> None:
    backup_id = "files-20261124T020000Z"
    back_up(project, backup_id, payload(3 * MiB, seed=6))
    missing = files_under(project.backups / "store" / "packs")[-1]
    missing.unlink()
    result = recover(project, backup_id)
    assert result.returncode == 3
    assert missing.name in result.stderr.decode() and "missing" in result.stderr.decode()
    assert result.stdout == b""


def test_a_list_copied_under_another_backups_name_is_refused(project: Project) -> None:
    back_up(project, "database-20261124T020000Z", payload(1 * MiB, seed=7))
    other = "database-20261124T040000Z"
    record = write(project.store, payload(1 * MiB, seed=8), other)
    write_manifest(project, other, record)
    folder = project.backups / "database"
    # The older backup's list and its MAC, put where the newer one's are: a rollback.
    (folder / "database-20261124T020000Z.chunks").replace(folder / f"{other}.chunks")
    older = json.loads((folder / "database-20261124T020000Z.manifest.json").read_text())
    manifest = json.loads((folder / f"{other}.manifest.json").read_text())
    manifest["chunk_list"]["mac"] = older["chunk_list"]["mac"]
    (folder / f"{other}.manifest.json").write_text(json.dumps(manifest, indent=2))
    result = recover(project, other)
    assert result.returncode == 3
    assert "is not the list of database-20261124T040000Z" in result.stderr.decode()
    assert result.stdout == b""


def test_a_wrong_key_and_bad_usage_are_refused_with_one_sentence(project: Project) -> None:
    backup_id = "config-20261124T020000Z"
    back_up(project, backup_id, b"config tar stand-in\n")
    (project.root / ".backup_key").write_text("f" * 64 + "\n")
    wrong_key = recover(project, backup_id)
    assert wrong_key.returncode == 3 and wrong_key.stdout == b""
    assert "no wrap in" in wrong_key.stderr.decode()
    unknown = recover(project, "config-20991231T000000Z")
    assert unknown.returncode == 2 and "no manifest" in unknown.stderr.decode()
    traversal = recover(project, "database-../../x")
    assert traversal.returncode == 2 and "not a backup id" in traversal.stderr.decode()


def test_the_script_is_posix_sh(project: Project) -> None:
    """dash -n parses it; and no bash-only construct slipped in."""
    text = Path(str(SCRIPT)).read_text()
    assert subprocess.run([SHELL, "-n", str(SCRIPT)], check=False).returncode == 0
    for bashism in ("[[", "pipefail", "local ", "$'", "<(", "==="):
        assert bashism not in text
    assert os.access(str(SCRIPT), os.R_OK)


def test_the_repositorys_scripts_recover_sh_is_the_template_init_writes() -> None:
    repo_script = Path(__file__).resolve().parents[3] / "scripts" / "recover.sh"
    assert repo_script.read_text() == SCRIPT.read_text()


def test_a_chunk_swapped_for_another_valid_one_is_refused_by_its_id(project: Project) -> None:
    """An index object that passes its MAC (written with the data key) but places one chunk
    at another's member, superseding the true one: the id check stops it, and what was
    written before is the payload's true beginning."""
    backup_id = "database-20261124T020000Z"
    data = payload(3 * MiB, seed=9)
    back_up(project, backup_id, data)
    store = project.store
    (true_name,) = store.loaded_index.objects
    text = read_index_object(store.layout, store.data_key, store.config, true_name)
    first_pack = next(pack for pack in text.packs if len(pack.chunks) >= 2)
    victim, donor = first_pack.chunks[-1], first_pack.chunks[0]
    first_pack.chunks[-1] = ChunkPlace(
        victim.chunk_id, donor.offset, donor.length, victim.plain_length
    )
    text.supersedes = [true_name]
    write_index_object(store.layout, store.data_key, store.config, text)
    result = recover(project, backup_id)
    assert result.returncode == 3
    assert f"chunk {victim.chunk_id.hex()} in pack {first_pack.name}" in result.stderr.decode()
    assert data.startswith(result.stdout) and len(result.stdout) < len(data)
    assert "Traceback" not in result.stderr.decode()


def test_an_empty_payload_and_a_second_backup_of_the_same_data(project: Project) -> None:
    """An empty payload gives empty output; a second backup that only names stored chunks
    (its list is all it added) comes back whole too."""
    back_up(project, "config-20261124T020000Z", b"")
    empty = recover(project, "config-20261124T020000Z")
    assert empty.returncode == 0, empty.stderr.decode()
    assert empty.stdout == b""
    data = payload(2 * MiB, seed=10)
    back_up(project, "files-20261124T020000Z", data)
    back_up(project, "files-20261124T020001Z", data)
    again = recover(project, "files-20261124T020001Z")
    assert again.returncode == 0, again.stderr.decode()
    assert again.stdout == data
