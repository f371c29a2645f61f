"""A small POSIX (pax) tar writer for regular files, directories and symlinks, for the build
server's thin client: `tarfile` and what it pulls in cost that process more than the whole of a
cached build. It writes what `tarfile.open(mode="w|", format=PAX_FORMAT).add(path, recursive=False)`
writes for those three kinds (the same names, modes, ids, sizes, links and sub-second mtimes),
except the user and group names, which it leaves empty (tarfile looks them up in passwd and group).
Anything else (a hard link, a fifo, a device, a socket, a name that is not UTF-8) is `Unsupported`:
the caller then uses tarfile.
"""

from __future__ import annotations

import os
import stat

BLOCK = 512
_MAGIC = b"ustar\x0000"


class Unsupported(Exception):
    """An entry this writer does not write (the caller falls back to tarfile)."""


def _number(value: int, digits: int) -> bytes:
    return b"%0*o\x00" % (digits - 1, value)


def _header(name: bytes, mode: int, uid: int, gid: int, size: int, mtime: int, kind: bytes,
            linkname: bytes = b"") -> bytes:
    fields = [name.ljust(100, b"\0"), _number(mode, 8), _number(uid, 8), _number(gid, 8), _number(size, 12),
              _number(mtime, 12), b" " * 8, kind, linkname.ljust(100, b"\0"), _MAGIC, b"\0" * 32, b"\0" * 32,
              _number(0, 8), _number(0, 8), b"\0" * 155]
    header = b"".join(fields).ljust(BLOCK, b"\0")
    checksum = sum(header)
    return header[:148] + b"%06o\x00 " % checksum + header[156:]


def _pax_records(records: dict[str, str]) -> bytes:
    out = []
    for key, value in records.items():
        body = f" {key}={value}\n".encode()
        length = len(body)
        while len(str(length)) + len(body) != length:   # the length counts its own digits
            length = len(str(length)) + len(body)
        out.append(str(length).encode() + body)
    return b"".join(out)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def entry_header(path: str, arcname: str, st: os.stat_result) -> tuple[bytes, int]:
    """The header blocks (a pax header, then ustar) of PATH as ARCNAME, and how many content bytes
    follow them (a regular file's size; 0 for a directory or a symlink)."""
    mode = st.st_mode
    if stat.S_ISREG(mode):
        if st.st_nlink > 1:
            raise Unsupported(f"{arcname}: a hard link")
        kind, size, link = b"0", st.st_size, ""
    elif stat.S_ISDIR(mode):
        kind, size, link = b"5", 0, ""
        arcname = arcname if arcname.endswith("/") else arcname + "/"
    elif stat.S_ISLNK(mode):
        kind, size, link = b"2", 0, os.readlink(path)
    else:
        raise Unsupported(f"{arcname}: not a file, directory or symlink")
    try:
        name_bytes, link_bytes = arcname.encode(), link.encode()
    except UnicodeEncodeError:   # undecodable bytes in a name: tarfile's hdrcharset=BINARY
        raise Unsupported(f"{arcname!r}: not UTF-8") from None
    pax = {}
    if len(name_bytes) > 100 or not arcname.isascii():
        pax["path"] = arcname
    if len(link_bytes) > 100 or not link.isascii():
        pax["linkpath"] = link
    for key, value, digits in (("uid", st.st_uid, 8), ("gid", st.st_gid, 8), ("size", size, 12)):
        if not 0 <= value < 8 ** (digits - 1):
            pax[key] = str(value)
    pax["mtime"] = str(st.st_mtime)     # a float, so tarfile keeps it in the pax header at full precision
    # The ustar fields as tarfile fills them when the pax header has the real values.
    ustar = _header(arcname.encode("ascii", "replace")[:100], stat.S_IMODE(mode),
                    0 if "uid" in pax else st.st_uid, 0 if "gid" in pax else st.st_gid,
                    0 if "size" in pax else size, 0, kind, link.encode("ascii", "replace")[:100])
    records = _pax_records(pax)
    extended = _header(b"././@PaxHeader", 0, 0, 0, len(records), 0, b"x") + records + _padding(len(records))
    return extended + ustar, size


def write_tar(root: str, names: list[str], out, chunk: int = 1 << 18) -> None:
    """ROOT's entries NAMES (relative paths, parents before children) as a tar stream to OUT
    (anything with write(bytes)); raises Unsupported before writing anything it cannot write."""
    entries = []
    for rel in names:
        path = os.path.join(root, rel)
        st = os.lstat(path)
        entries.append((path, *entry_header(path, rel, st)))
    pending, size_pending = [], 0
    for path, header, size in entries:
        pending.append(header)
        size_pending += len(header)
        if size:
            with open(path, "rb") as f:
                left = size
                while left:
                    data = f.read(min(chunk, left))
                    if not data:
                        raise OSError(f"{path}: the file shrank while it was sent")
                    pending.append(data)
                    size_pending += len(data)
                    left -= len(data)
                    if size_pending >= chunk:
                        out.write(b"".join(pending))
                        pending, size_pending = [], 0
            pending.append(_padding(size))
    pending.append(b"\0" * (2 * BLOCK))
    out.write(b"".join(pending))
