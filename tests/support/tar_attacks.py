"""Hostile layer tars: each one a tar (uncompressed bytes) that tries to write outside its root,
link to what is not in it, hide truncated data or claim a huge file.

`REFUSED` are the ones unpacking refuses outright, so `load` and `import` must reject them whole.
`CONTAINED` are escapes that unpacking defuses instead of refusing (a planted symlink is followed
as if the root were `/`): they may be accepted, but nothing may land outside the root.
Every attack names the host file it aims at with `{target}`, a path the test owns.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import tempfile

_DATA = b"escaped\n"


def _entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", linkname: str = "",
           mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.mtime = kind, mode, linkname, 1_700_000_000
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def tar_of(*entries: tuple[tarfile.TarInfo, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def _truncated_data() -> bytes:
    whole = tar_of(_entry("big", data=b"x" * 8192))
    return whole[:512 + 3000]  # the header, then less than half the data, no end marker


def _truncated_header() -> bytes:
    return tar_of(_entry("ok", data=b"fine\n"), _entry("next", data=b"y"))[:1024 + 200]


def sparse_tar(apparent_size: int, gnu_format: str = "gnu", *, tiny: bool = False) -> bytes:
    """A tar holding one sparse member `sparse` of APPARENT_SIZE with data at its start and end:
    GNU tar's old-GNU (`gnu`) or PAX 1.0 (`posix`) sparse encoding. TINY: 4 bytes at each end in
    512-byte records, a 2.5 KiB tar; else 4 KiB at each end."""
    head, tail = (b"head", b"tail") if tiny else (b"head" * 1024, b"tail" * 1024)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sparse")
        with open(path, "wb") as f:
            f.write(head)
            f.seek(apparent_size - len(tail))
            f.write(tail)
        args = ["tar", "--sparse", f"--format={gnu_format}", "--numeric-owner", "-C", tmp, "-cf", "-", "sparse"]
        if gnu_format == "posix":
            args[1:1] = ["--sparse-version=1.0"]
        if tiny:
            args[1:1] = ["--blocking-factor=1"]
        return subprocess.run(args, check=True, capture_output=True).stdout


def old_gnu_sparse_tar(apparent_size: int) -> bytes:
    """A 2.5 KiB tar: one old-GNU sparse member `sparse` (type S) of APPARENT_SIZE, whose only
    data is `head` in its first 512 bytes and `tail` in its last 512, written header by hand."""
    info = tarfile.TarInfo("sparse")
    info.type, info.mode, info.mtime, info.size = tarfile.GNUTYPE_SPARSE, 0o644, 1_700_000_000, 1024
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    for slot, (offset, length) in enumerate(((0, 512), (apparent_size - 512, 512))):
        at = 386 + slot * 24
        header[at:at + 24] = tarfile.itn(offset, 12, tarfile.GNU_FORMAT) + tarfile.itn(length, 12, tarfile.GNU_FORMAT)
    header[482] = 0  # no extension headers
    header[483:495] = tarfile.itn(apparent_size, 12, tarfile.GNU_FORMAT)
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    data = b"head".ljust(512, b"\0") + b"tail".rjust(512, b"\0")
    return bytes(header) + data + bytes(1024)


def refused(target: str) -> dict[str, bytes]:
    """Name -> tar that unpacking must refuse. TARGET is an absolute host path."""
    rel_target = "../" * 12 + target.lstrip("/")
    return {
        "dotdot-file": tar_of(_entry(rel_target, data=_DATA)),
        "dotdot-inside-dir": tar_of(_entry("a", tarfile.DIRTYPE, mode=0o755), _entry("a/../../x", data=_DATA)),
        "hardlink-absolute": tar_of(_entry("x", tarfile.LNKTYPE, linkname=target)),
        "hardlink-dotdot": tar_of(_entry("x", tarfile.LNKTYPE, linkname=rel_target)),
        "hardlink-forward": tar_of(_entry("x", tarfile.LNKTYPE, linkname="later"), _entry("later", data=_DATA)),
        "hardlink-to-dir": tar_of(_entry("d", tarfile.DIRTYPE, mode=0o755), _entry("x", tarfile.LNKTYPE, linkname="d")),
        "hardlink-through-symlink": tar_of(_entry("s", tarfile.SYMTYPE, linkname=os.path.dirname(target)),
                                           _entry("x", tarfile.LNKTYPE,
                                                  linkname="s/" + os.path.basename(target))),
        "whiteout-dotdot": tar_of(_entry(".wh..", data=b"")),
        "truncated-data": _truncated_data(),
        "truncated-header": _truncated_header(),
        "sparse-1tib": old_gnu_sparse_tar(1 << 40),
    }


def contained(target: str) -> dict[str, bytes]:
    """Name -> tar whose escape unpacking defuses: the write lands inside the root, or nowhere."""
    parent, base = os.path.dirname(target), os.path.basename(target)
    return {
        "symlink-dir-absolute": tar_of(_entry("s", tarfile.SYMTYPE, linkname=parent),
                                       _entry("s/" + base, data=_DATA)),
        "symlink-dir-relative": tar_of(_entry("s", tarfile.SYMTYPE, linkname="../" * 12 + parent.lstrip("/")),
                                       _entry("s/" + base, data=_DATA)),
        "symlink-chain": tar_of(_entry("a", tarfile.SYMTYPE, linkname="b"), _entry("b", tarfile.SYMTYPE, linkname=parent),
                                _entry("a/" + base, data=_DATA)),
        "symlink-then-file-replaces-link": tar_of(_entry("f", tarfile.SYMTYPE, linkname=target),
                                                  _entry("f", data=_DATA)),
        "absolute-name": tar_of(_entry(target, data=_DATA)),
        "symlink-loop": tar_of(_entry("l1", tarfile.SYMTYPE, linkname="l2"), _entry("l2", tarfile.SYMTYPE, linkname="l1"),
                               _entry("l1/x", data=_DATA)),
    }
