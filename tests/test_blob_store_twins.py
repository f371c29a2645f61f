"""The disk and memory blob stores pass the same tests (cache/blobs.py): what goes in under a
digest comes back only if it still matches it."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from builder.cache.blobs import BaseBlobStore, DiskBlobStore, MemoryBlobStore
from builder.errors import BlobNotFound, DigestMismatch

DATA = b"layer bytes\n" * 100
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()
ABSENT = "sha256:" + "0" * 64


def _corrupt_on_disk(store: DiskBlobStore, digest: str, data: bytes) -> None:
    with open(store.path(digest), "wb") as f:
        f.write(data)


def _corrupt_in_memory(store: MemoryBlobStore, digest: str, data: bytes) -> None:
    store.blobs[digest] = data


@pytest.fixture(params=["disk", "memory"])
def twin(request, tmp_path):
    """(a blob store, a function that overwrites a stored blob's bytes behind its back)."""
    if request.param == "disk":
        return DiskBlobStore(str(tmp_path / "blobs")), _corrupt_on_disk
    return MemoryBlobStore(), _corrupt_in_memory


@pytest.fixture
def blobs(twin) -> BaseBlobStore:
    return twin[0]


def test_bytes_come_back_under_their_digest(blobs):
    assert blobs.put_bytes(DATA) == DIGEST
    assert blobs.has(DIGEST) and blobs.size(DIGEST) == len(DATA)
    assert blobs.get_bytes(DIGEST) == DATA
    with blobs.open(DIGEST) as f:
        assert f.read() == DATA
    assert blobs.verify(DIGEST)
    assert list(blobs.digests()) == [DIGEST]


def test_a_stream_is_hashed_as_it_is_written(blobs):
    assert blobs.put_stream(io.BytesIO(DATA), DIGEST) == DIGEST
    with blobs.writer() as writer:
        writer.write(b"part one, ")
        writer.write(b"part two")
        assert writer.size == 18
        digest = writer.commit()
    assert blobs.get_bytes(digest) == b"part one, part two"


def test_a_wrong_expected_digest_stores_nothing(blobs):
    with pytest.raises(DigestMismatch):
        blobs.put_bytes(DATA, ABSENT)
    with pytest.raises(DigestMismatch):
        blobs.put_stream(io.BytesIO(DATA), ABSENT)
    assert list(blobs.digests()) == []


def test_a_write_left_uncommitted_leaves_nothing(blobs):
    with blobs.writer() as writer:
        writer.write(DATA)
    assert not blobs.has(DIGEST) and list(blobs.digests()) == []


def test_a_missing_blob_is_blob_not_found(blobs):
    assert not blobs.has(ABSENT)
    for read in (blobs.get_bytes, blobs.open, blobs.size, blobs.verify):
        with pytest.raises(BlobNotFound, match=ABSENT):
            read(ABSENT)
    blobs.delete(ABSENT)   # deleting what is not there is not an error


def test_a_name_that_is_no_sha256_digest_is_refused(blobs):
    for name in ("sha256:abc", "md5:" + "0" * 32, "sha256:" + "G" * 64):
        with pytest.raises(BlobNotFound, match="not a sha256 digest"):
            blobs.has(name)


def test_a_damaged_blob_fails_verification_on_read(twin):
    blobs, corrupt = twin
    blobs.put_bytes(DATA)
    corrupt(blobs, DIGEST, b"bit rot\n")
    with pytest.raises(DigestMismatch, match="stored blob"):
        blobs.get_bytes(DIGEST)
    assert not blobs.verify(DIGEST)
    assert blobs.get_bytes(DIGEST, verify=False) == b"bit rot\n"


def test_a_deleted_blob_is_gone(blobs):
    other = blobs.put_bytes(b"other")
    blobs.put_bytes(DATA)
    blobs.delete(DIGEST)
    assert not blobs.has(DIGEST) and list(blobs.digests()) == [other]


def test_digests_are_listed_sorted(blobs):
    stored = [blobs.put_bytes(str(n).encode()) for n in range(5)]
    assert list(blobs.digests()) == sorted(stored)


def test_the_disk_store_writes_through_a_temp_file_it_cleans(tmp_path):
    blobs = DiskBlobStore(str(tmp_path / "blobs"))
    writer = blobs.writer()
    writer.write(DATA)   # a writer killed before commit leaves its temp file
    assert os.listdir(blobs.tmp_dir) != []
    blobs.clean_temp()
    assert os.listdir(blobs.tmp_dir) == [] and not blobs.has(DIGEST)
