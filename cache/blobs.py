"""A content-addressed blob store: sha256 digests name files under one directory.

Writes are atomic (temp file in the same directory, fsync, rename), so a reader never sees a
partial blob and a killed writer leaves only a temp file that `BlobStore.clean_temp` removes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from typing import BinaryIO, Iterator

from builder.errors import BlobNotFound, DigestMismatch

_CHUNK = 1 << 20


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _check_digest(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or not all(c in "0123456789abcdef" for c in hexpart):
        raise BlobNotFound(f"not a sha256 digest: {digest!r}")
    return hexpart


class BlobWriter:
    """Streams data into the store, hashing as it goes; `commit` verifies and renames."""

    def __init__(self, store: "BlobStore"):
        self._store = store
        fd, self._tmp = tempfile.mkstemp(dir=store.tmp_dir, prefix="blob-")
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)
        return len(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    def commit(self, expected: str | None = None) -> str:
        digest = self.digest
        try:
            if expected is not None and expected != digest:
                raise DigestMismatch(expected, digest, "blob")
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.rename(self._tmp, self._store.path(digest))
        finally:
            self.abort()
        return digest

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        if os.path.exists(self._tmp):
            os.unlink(self._tmp)

    def __enter__(self) -> "BlobWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.abort()


class BlobStore:
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
        try:
            with open(self.path(digest), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} not found") from None
        if verify and sha256_digest(data) != digest:
            raise DigestMismatch(digest, sha256_digest(data), "stored blob")
        return data

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} not found") from None

    def verify(self, digest: str) -> bool:
        h = hashlib.sha256()
        with self.open(digest) as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
        return "sha256:" + h.hexdigest() == digest

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
