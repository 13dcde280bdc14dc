"""Packs: gzip members of chunks, 64-byte aligned, sealed as one openssl object whose name
is its MAC (docs/format.md, "Packs").

The writer encrypts and MACs each member as it is appended, into `store/tmp`, so neither
the plaintext nor the ciphertext of a pack is ever held whole; the reader checks the
whole pack's MAC before it decompresses a single member.
"""

from __future__ import annotations

import hashlib
import hmac

from cosmic_backup.chunkstore.layout import PartialFile, StoreLayout
from cosmic_backup.clock import Clock, iso
from cosmic_backup.errors import IntegrityError
from cosmic_backup.format.cipher import Encryptor, decrypt_whole
from cosmic_backup.format.index_text import ChunkPlace, PackRecord
from cosmic_backup.format.objects import DataKey, aligned_member, gunzip_member
from cosmic_backup.format.store_config import StoreConfig

PACK_MAC = "pack-mac"


class PackWriter:
    """One open pack. `add` appends a chunk's member; `full` says when to `commit`."""

    def __init__(
        self, layout: StoreLayout, data_key: DataKey, config: StoreConfig, clock: Clock
    ) -> None:
        self._layout = layout
        self._target = config.pack_target
        self._alignment = config.member_alignment
        self._clock = clock
        self._file = PartialFile(layout)
        self._encryptor = Encryptor(data_key.passphrase, config.object_iterations)
        self._mac = hmac.new(data_key.derive(PACK_MAC), digestmod=hashlib.sha256)
        self._stored_size = 0
        self.plaintext_size = 0
        self.chunks: dict[bytes, ChunkPlace] = {}  # this pack's chunks, found before commit

    def _emit(self, stored: bytes) -> None:
        self.write_sealed(self._account(stored))

    def _account(self, stored: bytes) -> bytes:
        self._mac.update(stored)
        self._stored_size += len(stored)
        return stored

    def write_sealed(self, stored: bytes) -> None:
        """Write what `seal` returned, in the order it returned it (a sealing thread
        seals; the caller's thread writes, so every write, fsync and rename of the store
        stays on one thread, in one order)."""
        self._file.write(stored)

    def add(self, chunk_id: bytes, data: bytes | memoryview) -> ChunkPlace:
        place, stored = self.seal(chunk_id, data)
        self.write_sealed(stored)
        return place

    def seal(self, chunk_id: bytes, data: bytes | memoryview) -> tuple[ChunkPlace, bytes]:
        """A chunk's member compressed, encrypted and MACed, not yet written."""
        member = aligned_member(bytes(data), self._alignment)
        place = ChunkPlace(chunk_id, self.plaintext_size, len(member), len(data))
        stored = self._account(self._encryptor.update(member))
        self.plaintext_size += len(member)
        self.chunks[chunk_id] = place
        return place, stored

    def add_member(self, chunk_id: bytes, member: bytes, plain_length: int) -> ChunkPlace:
        """Append an aligned member as it is (a repack copies members without recompressing)."""
        place = ChunkPlace(chunk_id, self.plaintext_size, len(member), plain_length)
        self._emit(self._encryptor.update(member))
        self.plaintext_size += len(member)
        self.chunks[chunk_id] = place
        return place

    @property
    def full(self) -> bool:
        return self.plaintext_size >= self._target

    def commit(self) -> PackRecord:
        """Finish the ciphertext and make the pack durable under its name, its MAC."""
        self._emit(self._encryptor.finalize())
        name = self._mac.hexdigest()
        self._file.commit(self._layout.pack(name))
        return PackRecord(
            name, self._stored_size, iso(self._clock.now()), list(self.chunks.values())
        )

    def discard(self) -> None:
        self._file.discard()


class PackProblem(IntegrityError):
    """A pack is missing or fails its MAC; the reader adds the chunk and the backup."""

    def __init__(self, pack: str, what: str) -> None:
        super().__init__(f"the pack {pack} {what}")
        self.pack = pack
        self.what = what


def read_pack(layout: StoreLayout, data_key: DataKey, config: StoreConfig, name: str) -> bytearray:
    """A pack's plaintext (its members), once the whole file's MAC matched its name."""
    path = layout.pack(name)
    try:
        stored = path.read_bytes()
    except FileNotFoundError:
        raise PackProblem(name, f"is missing ({path} does not exist)") from None
    actual = hmac.new(data_key.derive(PACK_MAC), stored, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(actual, name):
        raise PackProblem(
            name,
            "fails its integrity check (its MAC does not match its name): it is damaged, "
            "truncated or another pack was put in its place",
        )
    return decrypt_whole(stored, data_key.passphrase, config.object_iterations)


def cut_member(plaintext: bytes | bytearray, offset: int, length: int) -> bytes:
    """One chunk: its member cut out of the pack's plaintext (a view, not a copy) and
    gunzipped."""
    if offset + length > len(plaintext):
        raise IntegrityError("a chunk's place lies outside its pack")
    with memoryview(plaintext) as view:
        return gunzip_member(view[offset : offset + length])
