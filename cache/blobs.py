"""Content-addressed blob stores: a sha256 digest names each blob, and what is read back is
checked against it.

    BaseBlobStore      the interface: has, size, writer, put_bytes, put_stream, get_bytes, open,
                       verify, delete, digests (as dulwich's BaseObjectStore)
    DiskBlobStore      blobs as files under one directory (`BlobStore`, the name callers use)
    MemoryBlobStore    blobs in a dict, for tests of the logic above the store

On disk, writes are atomic (temp file in the same directory, fsync, rename), so a reader never
sees a partial blob and a killed writer leaves only a temp file that `clean_temp` removes.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import threading
from abc import ABC, abstractmethod
from typing import BinaryIO, Iterator

from builder.errors import BlobNotFound, DigestMismatch
from builder.plumbing.files import fsync_directory

_CHUNK = 1 << 20


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _check_digest(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or not all(c in "0123456789abcdef" for c in hexpart):
        raise BlobNotFound(f"not a sha256 digest: {digest!r}")
    return hexpart


class BaseBlobWriter(ABC):
    """Streams data into a store, hashing as it goes; `commit` verifies and publishes the blob.
    Leaving the `with` block without a commit discards what was written."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._write(data)
        self._hash.update(data)
        self.size += len(data)
        return len(data)

    def write_unhashed(self, data: bytes) -> int:
        """Write DATA that the caller hashes itself, on another thread (a layer commit overlaps
        the two); the caller then passes its digest to `commit(hashed_as=...)`."""
        self._write(data)
        self.size += len(data)
        return len(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    def commit(self, expected: str | None = None, *, hashed_as: str | None = None) -> str:
        """HASHED_AS: the sha256 digest the caller computed of everything it wrote (with
        `write_unhashed`); otherwise the writer's own hash names the blob."""
        digest = hashed_as or self.digest
        try:
            if expected is not None and expected != digest:
                raise DigestMismatch(expected, digest, "blob")
            self._publish(digest)
        finally:
            self.abort()
        return digest

    @abstractmethod
    def _write(self, data: bytes) -> None: ...

    @abstractmethod
    def _publish(self, digest: str) -> None:
        """Make the written bytes the blob DIGEST, all at once."""

    @abstractmethod
    def abort(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.abort()


class BaseBlobStore(ABC):
    """What every blob store does; the reading and writing helpers are shared by all."""

    @abstractmethod
    def has(self, digest: str) -> bool: ...

    @abstractmethod
    def size(self, digest: str) -> int:
        """The blob's size in bytes; BlobNotFound if it is not stored."""

    @abstractmethod
    def writer(self) -> BaseBlobWriter: ...

    @abstractmethod
    def open(self, digest: str) -> BinaryIO:
        """The blob's bytes as stored (unverified: see `verify`); BlobNotFound if absent."""

    @abstractmethod
    def delete(self, digest: str) -> None:
        """Forget the blob; nothing happens if it is not stored."""

    @abstractmethod
    def digests(self) -> Iterator[str]:
        """Every stored digest, sorted."""

    def put_bytes(self, data: bytes, expected: str | None = None) -> str:
        digest = sha256_digest(data)
        if expected is not None and expected != digest:
            raise DigestMismatch(expected, digest, "blob")
        if not self.has(digest):
            with self.writer() as w:
                w.write(data)
                w.commit(digest)
        return digest

    def put_stream(self, stream: BinaryIO, expected: str | None = None) -> str:
        with self.writer() as w:
            shutil.copyfileobj(stream, w, _CHUNK)
            return w.commit(expected)

    def get_bytes(self, digest: str, verify: bool = True) -> bytes:
        """The whole blob; DigestMismatch if VERIFY and its bytes no longer match its digest."""
        with self.open(digest) as f:
            data = f.read()
        if verify and sha256_digest(data) != digest:
            raise DigestMismatch(digest, sha256_digest(data), "stored blob")
        return data

    def verify(self, digest: str) -> bool:
        h = hashlib.sha256()
        with self.open(digest) as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
        return "sha256:" + h.hexdigest() == digest

    def clean_temp(self) -> None:
        """Remove writes left by a killed process (none but on disk)."""


class BlobWriter(BaseBlobWriter):
    """A write into a DiskBlobStore: a temp file, fsync-ed and renamed into place on commit."""

    def __init__(self, store: "DiskBlobStore"):
        super().__init__()
        self._store = store
        fd, self._tmp = tempfile.mkstemp(dir=store.tmp_dir, prefix="blob-")
        self._file = os.fdopen(fd, "wb")

    def _write(self, data: bytes) -> None:
        self._file.write(data)

    def _publish(self, digest: str) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        target = self._store.path(digest)
        os.rename(self._tmp, target)
        fsync_directory(os.path.dirname(target))  # the rename itself survives a crash

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        if os.path.exists(self._tmp):
            os.unlink(self._tmp)


class DiskBlobStore(BaseBlobStore):
    """Blobs live at ROOT/sha256/<hex>; ROOT/tmp holds writes in progress."""

    def __init__(self, root: str):
        self.root = root
        self.blob_dir = os.path.join(root, "sha256")
        self.tmp_dir = os.path.join(root, "tmp")
        os.makedirs(self.blob_dir, exist_ok=True)
        os.makedirs(self.tmp_dir, exist_ok=True)

    def path(self, digest: str) -> str:
        return os.path.join(self.blob_dir, _check_digest(digest))

    def has(self, digest: str) -> bool:
        return os.path.exists(self.path(digest))

    def size(self, digest: str) -> int:
        try:
            return os.stat(self.path(digest)).st_size
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} not found") from None

    def writer(self) -> BlobWriter:
        return BlobWriter(self)

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} not found") from None

    def delete(self, digest: str) -> None:
        try:
            os.unlink(self.path(digest))
        except FileNotFoundError:
            pass

    def digests(self) -> Iterator[str]:
        for name in sorted(os.listdir(self.blob_dir)):
            yield "sha256:" + name

    def clean_temp(self) -> None:
        """Remove writes left by a killed process. Call only while holding the store's lock."""
        for name in os.listdir(self.tmp_dir):
            os.unlink(os.path.join(self.tmp_dir, name))


BlobStore = DiskBlobStore


class MemoryBlobWriter(BaseBlobWriter):
    def __init__(self, store: "MemoryBlobStore"):
        super().__init__()
        self._store = store
        self._buffer: io.BytesIO | None = io.BytesIO()

    def _write(self, data: bytes) -> None:
        self._buffer.write(data)

    def _publish(self, digest: str) -> None:
        self._store._add(digest, self._buffer.getvalue())

    def abort(self) -> None:
        self._buffer = None


class MemoryBlobStore(BaseBlobStore):
    """Blobs in a dict, safe to share between threads. `blobs` maps digest -> stored bytes; a
    test may change them to see what a damaged store does."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def _add(self, digest: str, data: bytes) -> None:
        _check_digest(digest)
        with self._lock:
            self.blobs[digest] = data   # as a rename on disk: the last write wins

    def _get(self, digest: str) -> bytes:
        _check_digest(digest)
        try:
            return self.blobs[digest]
        except KeyError:
            raise BlobNotFound(f"blob {digest} not found") from None

    def has(self, digest: str) -> bool:
        _check_digest(digest)
        return digest in self.blobs

    def size(self, digest: str) -> int:
        return len(self._get(digest))

    def writer(self) -> MemoryBlobWriter:
        return MemoryBlobWriter(self)

    def open(self, digest: str) -> BinaryIO:
        return io.BytesIO(self._get(digest))

    def delete(self, digest: str) -> None:
        _check_digest(digest)
        with self._lock:
            self.blobs.pop(digest, None)

    def digests(self) -> Iterator[str]:
        with self._lock:
            names = sorted(self.blobs)
        yield from names
