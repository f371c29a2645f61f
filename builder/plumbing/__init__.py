"""Leaf modules every layer uses; none imports anything else of build-image.

    linux.py        the Linux calls Python 3.11 lacks (mount API, unshare, pivot_root, setns)
    files.py        atomic file writes (temp file beside the target, fsync, rename, fsync the dir),
                    exclusive lock files
    paths.py        a path resolved inside a root directory, symlinks followed as if it were '/'
    compression.py  gzip/zstd/bzip2/xz sniffed by magic number and decompressed as a stream
    canonical.py    the canonical JSON bytes every digest is taken over
    sparse.py       files with holes: where their data is (SEEK_DATA), their PAX 1.0 sparse tar member
    detached.py     directories deleted by a detached process that inherits the caller's locks
"""
