"""The thin client's tar writer against tarfile: what tarfile's reader sees in its stream is what
it sees in tarfile's own for the same entries (user and group names aside: the writer leaves them
empty), and what it cannot write it refuses before writing anything."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from builder.plumbing.tarwriter import Unsupported, write_tar


def _tree(root) -> list[str]:
    files = {"Dockerfile": b"FROM scratch\n", "empty": b"", "exactly-512": b"x" * 512,
             "big.bin": os.urandom(700_000), "d/nested/deep.txt": b"deep\n",
             "ünïcödé/名前.txt": "unicode\n".encode(), ("long-" * 30) + "/file-" + "n" * 120: b"long\n"}
    for rel, data in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    os.makedirs(os.path.join(root, "empty-dir"))
    os.chmod(os.path.join(root, "Dockerfile"), 0o755)
    os.chmod(os.path.join(root, "empty"), 0o600)
    os.symlink("d/nested/deep.txt", os.path.join(root, "link"))
    os.symlink("/" + "t" * 150, os.path.join(root, "long-link"))
    os.symlink("nowhere", os.path.join(root, "dangling"))
    os.utime(os.path.join(root, "empty"), (1, 1700000000.123456))
    os.utime(os.path.join(root, "big.bin"), (1, 0))
    names = []
    for top, dirs, found in os.walk(root):
        dirs.sort()
        rel = os.path.relpath(top, root)
        for name in sorted(dirs + found):
            names.append(name if rel == "." else f"{rel}/{name}")
    return names


def _members(data: bytes) -> list[tuple]:
    seen = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tf:
        for m in tf:
            content = tf.extractfile(m).read() if m.isfile() else None
            seen.append((m.name, m.type, m.mode, m.uid, m.gid, m.size, m.mtime, m.linkname, content))
    return seen


def test_the_stream_reads_back_as_tarfiles_own(tmp_path):
    root = str(tmp_path / "ctx")
    os.makedirs(root)
    names = _tree(root)
    ours = io.BytesIO()
    write_tar(root, names, ours, chunk=4096)
    theirs = io.BytesIO()
    with tarfile.open(fileobj=theirs, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        for rel in names:
            tf.add(os.path.join(root, rel), arcname=rel, recursive=False)
    assert _members(ours.getvalue()) == _members(theirs.getvalue())
    assert len(_members(ours.getvalue())) == len(names) > 10
    by_name = {m[0]: m for m in _members(ours.getvalue())}
    assert by_name["empty"][6] == 1700000000.123456 and by_name["link"][7] == "d/nested/deep.txt"


def test_what_it_cannot_write_is_refused_before_anything_is_written(tmp_path):
    root = tmp_path / "ctx"
    root.mkdir()
    (root / "a").write_text("a\n")
    os.link(root / "a", root / "hard")
    os.mkfifo(root / "fifo")
    for name in ("hard", "fifo"):
        out = io.BytesIO()
        with pytest.raises(Unsupported):
            write_tar(str(root), ["a", name], out)
        assert out.getvalue() == b""
