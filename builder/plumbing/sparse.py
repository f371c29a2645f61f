"""Files with holes, in and out of tar: where a file's data is, and its PAX 1.0 sparse member.

A sparse member (GNU tar's --sparse-version=1.0, read by GNU tar, Go's archive/tar and Python's
tarfile) stores only the data runs, after a map of where they go:

    header  path=DIR/GNUSparseFile.0/NAME, GNU.sparse.major=1, GNU.sparse.minor=0,
            GNU.sparse.name=DIR/NAME, GNU.sparse.realsize=SIZE; size = map + runs
    data    "COUNT\\nOFFSET\\nLENGTH\\n..." padded with NULs to 512 bytes, then each run's bytes

Without it a 1 GiB file with 8 KiB of data costs 1 GiB in every tar and on every disk it lands.
"""

from __future__ import annotations

import errno
import os
import tarfile

Regions = list[tuple[int, int]]


def data_regions(fd: int, size: int, blocks: int) -> Regions | None:
    """The (offset, length) runs of data in the file FD of SIZE bytes and BLOCKS 512-byte blocks,
    found with SEEK_DATA/SEEK_HOLE; None when it has no hole (the cheap common case, by BLOCKS)."""
    if size == 0 or blocks * 512 >= size:
        return None
    regions: Regions = []
    position = 0
    while position < size:
        try:
            start = os.lseek(fd, position, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole from here to the end
                break
            if e.errno == errno.EINVAL:  # a filesystem without SEEK_DATA
                return None
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        regions.append((start, end - start))
        position = end
    return None if regions == [(0, size)] else regions


def sparse_member(info: tarfile.TarInfo, regions: Regions) -> tuple[tarfile.TarInfo, bytes]:
    """INFO (a regular file of INFO.size bytes) made the header of a PAX 1.0 sparse member holding
    the data REGIONS, and the map that starts its data; the runs' bytes follow the map."""
    size = info.size
    regions = [(offset, length) for offset, length in regions if length]
    if not regions or sum(regions[-1]) < size:
        regions.append((size, 0))  # a trailing hole, as GNU tar marks it
    body = "".join(f"{offset}\n{length}\n" for offset, length in regions)
    sparse_map = f"{len(regions)}\n{body}".encode()
    sparse_map += bytes(-len(sparse_map) % tarfile.BLOCKSIZE)
    directory, base = os.path.split(info.name)
    stored = os.path.join(directory, "GNUSparseFile.0", base)
    member = tarfile.TarInfo(stored)
    for attribute in ("mode", "uid", "gid", "uname", "gname", "mtime", "type"):
        setattr(member, attribute, getattr(info, attribute))
    # "path" first: else tarfile appends one after GNU.sparse.name, and readers take the last
    kept = {k: v for k, v in info.pax_headers.items() if not k.startswith("GNU.sparse.") and k != "path"}
    member.pax_headers = {"path": stored, "GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                          "GNU.sparse.name": info.name, "GNU.sparse.realsize": str(size), **kept}
    member.size = len(sparse_map) + sum(length for _, length in regions)
    return member, sparse_map
