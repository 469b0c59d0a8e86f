"""The tenant archive as a file: a tar stream (manifest, database dump, main-database rows, uploaded files), encrypted
at rest in chunks and decrypted as it streams.

Encryption: AES-256-GCM, one key per archive derived (HKDF) from the first of SILO_CREDENTIALS_KEYS and a random salt
in the header; the header names the key by a digest, so any of the configured keys opens it (rotation). Each chunk's
nonce is its index and its associated data says whether it is the last, so a chunk cut off, moved or swapped makes the
archive unreadable instead of silently shorter.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import struct
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

FORMAT_VERSION = 1
MAGIC = b"SILOARC1"
_SALT_BYTES = 16
_KEY_ID_BYTES = 8
_HEADER_BYTES = len(MAGIC) + _KEY_ID_BYTES + _SALT_BYTES
CHUNK_BYTES = 1 << 20
MANIFEST = "manifest.json"
DATABASE = "database.dump"
MAIN_ROWS = "main.json"
# Nothing else may be in an archive: a name outside these never reaches the disk.
_MEMBER_NAME = re.compile(r"^(manifest\.json|database\.dump|main\.json|files/[0-9]{1,18}\.[a-z0-9]{1,10})$")


class ArchiveUnreadable(Exception):
    """The file is not a Silo archive, is damaged, or was written with a key this installation does not have; the
    message says which and what to do."""


def _key_id(secret: str) -> bytes:
    return hashlib.sha256(b"silo-archive-key:" + secret.encode()).digest()[:_KEY_ID_BYTES]


def _derive(secret: str, salt: bytes) -> AESGCM:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"silo tenant archive").derive(secret.encode())
    return AESGCM(key)


def _nonce(index: int) -> bytes:
    return b"\0\0\0\0" + index.to_bytes(8, "big")


def _associated(index: int, last: bool) -> bytes:
    return MAGIC + index.to_bytes(8, "big") + (b"\1" if last else b"\0")


class EncryptingWriter(io.RawIOBase):
    """A write-only stream that encrypts what it is given into `target`, a chunk at a time."""

    def __init__(self, target: IO[bytes]):
        super().__init__()
        secret = settings.CREDENTIALS_KEYS[0]
        salt = os.urandom(_SALT_BYTES)
        self._aead = _derive(secret, salt)
        self._target = target
        self._buffer = bytearray()
        self._index = 0
        target.write(MAGIC + _key_id(secret) + salt)

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._buffer += data
        while len(self._buffer) > CHUNK_BYTES:  # keep one chunk back: the last one is sealed as last on close
            self._seal(bytes(self._buffer[:CHUNK_BYTES]), last=False)
            del self._buffer[:CHUNK_BYTES]
        return len(data)

    def _seal(self, plain: bytes, last: bool) -> None:
        sealed = self._aead.encrypt(_nonce(self._index), plain, _associated(self._index, last))
        self._target.write(struct.pack(">I", len(sealed)) + sealed)
        self._index += 1

    def close(self) -> None:
        if not self.closed:
            self._seal(bytes(self._buffer), last=True)
            self._buffer.clear()
        super().close()


def _read_exactly(source: IO[bytes], size: int) -> bytes:
    """`size` bytes, fewer only at the end (a network stream may hand over less than asked per read)."""
    parts = []
    while size > 0:
        part = source.read(size)
        if not part:
            break
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def decrypted_chunks(source: IO[bytes]) -> Iterator[bytes]:
    """The plaintext of an encrypted archive, chunk by chunk (for a download that streams)."""
    header = _read_exactly(source, _HEADER_BYTES)
    if len(header) < _HEADER_BYTES or not header.startswith(MAGIC):
        raise ArchiveUnreadable("This file is not an encrypted Silo archive.")
    key_id, salt = header[len(MAGIC) : len(MAGIC) + _KEY_ID_BYTES], header[len(MAGIC) + _KEY_ID_BYTES :]
    secret = next((key for key in settings.CREDENTIALS_KEYS if _key_id(key) == key_id), None)
    if secret is None:
        raise ArchiveUnreadable(
            "This archive was encrypted by another Silo installation: its key is not among SILO_CREDENTIALS_KEYS. "
            "Import the decrypted archive its owner downloaded instead, or add that installation's key."
        )
    aead = _derive(secret, salt)
    index = 0
    while True:
        length_bytes = _read_exactly(source, 4)
        if len(length_bytes) < 4:
            raise ArchiveUnreadable("This archive is cut short (its last part is missing): it cannot be used.")
        (length,) = struct.unpack(">I", length_bytes)
        sealed = _read_exactly(source, length)
        if len(sealed) < length:
            raise ArchiveUnreadable("This archive is cut short (its last part is missing): it cannot be used.")
        for last in (False, True):
            try:
                plain = aead.decrypt(_nonce(index), sealed, _associated(index, last))
                break
            except InvalidTag:
                continue
        else:
            raise ArchiveUnreadable(f"This archive is damaged (part {index + 1} fails its integrity check).")
        yield plain
        index += 1
        if last:
            if source.read(1):
                raise ArchiveUnreadable("This archive has data after its end: it was tampered with.")
            return


class _ChunkReader(io.RawIOBase):
    """A read-only stream over an iterator of byte chunks (tarfile's stream mode reads it)."""

    def __init__(self, chunks: Iterator[bytes]):
        super().__init__()
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = chunk
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def archive_write(folder: Path, manifest: dict, target: Path) -> tuple[int, str]:
    """Pack every file in `folder` (database.dump, main.json, files/...) and the manifest, with each file's checksum,
    into an encrypted archive at `target` (written beside it, then renamed: no half-written archive is ever listed).
    Returns (size in bytes, sha256 of the encrypted file)."""
    names = sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())
    manifest = {**manifest, "format_version": FORMAT_VERSION, "checksums": {n: sha256_of(folder / n) for n in names}}
    partial = target.with_name(target.name + ".partial")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(partial, "wb") as handle:
        os.chmod(partial, 0o600)
        writer = EncryptingWriter(handle)
        with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as archive:
            for name in names:
                archive.add(folder / name, arcname=name, recursive=False, filter=_plain_member)
            data = json.dumps(manifest, indent=2, sort_keys=True).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size = len(data)
            info.mode = 0o600
            archive.addfile(info, io.BytesIO(data))
        writer.close()
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(target)
    return target.stat().st_size, sha256_of(target)


def _plain_member(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o600
    return info


def plaintext_chunks(path: Path) -> Iterator[bytes]:
    """The archive as a plain tar, chunk by chunk, whether the file is encrypted (ours) or already plain (one its
    owner downloaded)."""
    with open(path, "rb") as handle:
        yield from stream_plaintext_chunks(handle)


def stream_plaintext_chunks(handle: IO[bytes]) -> Iterator[bytes]:
    """The same from a stream read once, front to back (an object storage download)."""
    start = _read_exactly(handle, len(MAGIC))
    if start == MAGIC:
        yield from decrypted_chunks(cast(IO[bytes], _Prefixed(start, handle)))
    else:
        yield start
        yield from iter(lambda: handle.read(CHUNK_BYTES), b"")


class _Prefixed:
    """A stream with bytes already read from it put back in front."""

    def __init__(self, prefix: bytes, rest: IO[bytes]):
        self._prefix, self._rest = prefix, rest

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            taken, self._prefix = self._prefix, b""
            return taken + self._rest.read()
        if self._prefix:
            taken, self._prefix = self._prefix[:size], self._prefix[size:]
            return taken
        return self._rest.read(size)


@dataclass
class OpenedArchive:
    folder: Path  # database.dump, main.json, files/...
    manifest: dict

    @property
    def database(self) -> Path:
        return self.folder / DATABASE

    def main_rows(self) -> dict:
        return json.loads((self.folder / MAIN_ROWS).read_text())


@contextlib.contextmanager
def archive_open(path: Path) -> Iterator[OpenedArchive]:
    """Decrypt and unpack the archive into a private temporary folder, check every file against the manifest's
    checksums, and hand it over; the folder goes afterwards. ArchiveUnreadable says what is wrong with it."""
    if not path.is_file():
        raise ArchiveUnreadable(f"There is no archive at {path}.")
    folder = Path(tempfile.mkdtemp(prefix="silo-archive-"))
    try:
        _unpack(path, folder)
        yield OpenedArchive(folder=folder, manifest=_checked_manifest(folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _unpack(path: Path, folder: Path) -> None:
    try:
        with tarfile.open(fileobj=_ChunkReader(plaintext_chunks(path)), mode="r|") as archive:
            for member in archive:
                if not member.isfile() or not _MEMBER_NAME.match(member.name):
                    raise ArchiveUnreadable(f"This archive holds {member.name!r}, which no Silo archive holds.")
                target = folder / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                source = archive.extractfile(member)
                assert source is not None  # a regular file
                with open(target, "wb") as handle:
                    shutil.copyfileobj(source, handle)
    except (tarfile.TarError, EOFError):
        raise ArchiveUnreadable("This file is not a Silo archive (nor one decrypted by its owner).") from None


def _checked_manifest(folder: Path) -> dict:
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        raise ArchiveUnreadable("This archive has no manifest: it is not a Silo archive, or it is incomplete.")
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError:
        raise ArchiveUnreadable("This archive's manifest is damaged.") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise ArchiveUnreadable(
            f"This archive's format version is {manifest.get('format_version') if isinstance(manifest, dict) else '?'}"
            f"; this Silo reads version {FORMAT_VERSION}."
        )
    checksums = manifest.get("checksums") or {}
    present = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    if sorted(checksums) != present or DATABASE not in checksums or MAIN_ROWS not in checksums:
        raise ArchiveUnreadable("This archive's files do not match its manifest: it is incomplete or was altered.")
    for name, expected in checksums.items():
        if sha256_of(folder / name) != expected:
            raise ArchiveUnreadable(f"This archive is damaged: {name} does not match its checksum.")
    return manifest
