"""plumbing.files.copy_file: the kernel's copy paths (reflink, copy_file_range, sendfile) and the
read/write loop under them, each taken when the one above it is not supported."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess

import pytest

from builder.plumbing import files
from builder.plumbing.files import copy_file


@pytest.fixture(autouse=True)
def fresh_method_memo(monkeypatch):
    """Each test learns from scratch which methods its filesystems support."""
    monkeypatch.setattr(files, "_NO_CLONE", set())
    monkeypatch.setattr(files, "_NO_COPY_RANGE", set())


def _source(tmp_path, size: int) -> tuple[str, bytes]:
    data = os.urandom(size)
    path = tmp_path / f"src-{size}"
    path.write_bytes(data)
    return str(path), data


def _unsupported(*args, **kwargs):
    raise OSError(errno.EXDEV, "Invalid cross-device link")


@pytest.mark.parametrize("size", [0, 1, 4096, (3 << 20) + 17])
def test_copy_is_byte_identical_and_replaces_the_target(tmp_path, size):
    src, data = _source(tmp_path, size)
    dst = tmp_path / "dst"
    dst.write_bytes(b"old content that is longer than some sources" * 100)
    method = copy_file(src, str(dst), mode=0o640)
    assert dst.read_bytes() == data
    # ext4 and tmpfs have no reflink; within one filesystem the kernel copies the range itself.
    assert method in ("empty", "reflink", "copy_file_range", "sendfile")


def test_new_files_get_the_mode_asked(tmp_path):
    src, _ = _source(tmp_path, 10)
    old = os.umask(0)
    try:
        copy_file(src, str(tmp_path / "dst"), mode=0o640)
    finally:
        os.umask(old)
    assert (tmp_path / "dst").stat().st_mode & 0o777 == 0o640


def test_without_copy_file_range_sendfile_copies(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "copy_file_range", _unsupported)
    src, data = _source(tmp_path, (2 << 20) + 5)
    assert copy_file(src, str(tmp_path / "dst")) == "sendfile"
    assert (tmp_path / "dst").read_bytes() == data
    assert len(files._NO_COPY_RANGE) == 1           # the next file does not try again


def test_a_copy_file_range_that_stops_halfway_is_finished_by_sendfile(tmp_path, monkeypatch):
    real = os.copy_file_range
    calls = []

    def half_then_refuse(src_fd, dst_fd, count, offset_src, offset_dst):
        calls.append(offset_src)
        if offset_src:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(src_fd, dst_fd, 1000, offset_src, offset_dst)

    monkeypatch.setattr(os, "copy_file_range", half_then_refuse)
    src, data = _source(tmp_path, 5000)
    assert copy_file(src, str(tmp_path / "dst")) == "copy_file_range+sendfile"
    assert (tmp_path / "dst").read_bytes() == data and calls == [0, 1000]


def test_without_either_kernel_path_a_read_write_loop_copies(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "copy_file_range", _unsupported)
    monkeypatch.setattr(os, "sendfile", lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSYS, "no")))
    src, data = _source(tmp_path, (1 << 20) * 2 + 3)
    assert copy_file(src, str(tmp_path / "dst")) == "read/write"
    assert (tmp_path / "dst").read_bytes() == data


def test_a_real_error_is_not_taken_for_an_unsupported_method(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "copy_file_range", lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    src, _ = _source(tmp_path, 100)
    with pytest.raises(OSError) as raised:
        copy_file(src, str(tmp_path / "dst"))
    assert raised.value.errno == errno.ENOSPC


def test_a_missing_source_raises_and_makes_no_target(tmp_path):
    with pytest.raises(FileNotFoundError):
        copy_file(str(tmp_path / "missing"), str(tmp_path / "dst"))
    assert not (tmp_path / "dst").exists()


@pytest.mark.root
@pytest.mark.skipif(shutil.which("mkfs.btrfs") is None, reason="btrfs-progs is not installed")
def test_btrfs_shares_extents_by_reflink(tmp_path):
    image, mnt = tmp_path / "fs.img", tmp_path / "mnt"
    with open(image, "wb") as f:
        f.truncate(160 << 20)
    subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        src, data = _source(mnt, 1 << 20)
        assert copy_file(src, str(mnt / "clone")) == "reflink"
        assert (mnt / "clone").read_bytes() == data
        outside, _ = _source(tmp_path, 4096)        # another filesystem: no reflink, the kernel copies
        assert copy_file(outside, str(mnt / "copied")) in ("copy_file_range", "sendfile")
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
