"""Layer diffs: overlay upper dir -> OCI layer blob, and OCI layer tar -> directory.

Two encodings of "what changed" meet here:

    overlayfs upper dir                      OCI layer tar (image-spec layer.md)
    deleted path: char device 0:0 `x`        regular file `.wh.x`
    opaque dir: xattr trusted.overlay.opaque  entry `dir/.wh..wh..opq`

`write_layer` turns the first into the second in one streaming pass (`rewrite_layer_timestamps`
re-clamps the mtimes of one it wrote); `hash_layer` only hashes that tar (a build's commit: the
snapshot is the layer's content) and `stream_layer_tar` makes it again when a blob is needed.
`unpack_layer` goes back, so a pulled layer can serve as an overlay lower dir; `apply_layer`
flattens a layer onto a plain root filesystem instead (whiteouts delete).

Layer tars are untrusted. Every entry name is cleaned (a leading `/` is dropped, `..` is refused)
and every parent directory is resolved inside the destination as if it were `/` (a symlink the
archive planted, absolute or relative, never leads out); the last component is never followed.
The destination is assumed private to the caller while it is being written (no concurrent
renames inside it).
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import queue
import shutil
import stat
import tarfile
import threading
import zlib
from typing import BinaryIO, Iterator, Sequence

from builder.cache.blobs import BlobStore, BlobWriter
from builder.errors import StoreError
from builder.image.media import OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD
from builder.plumbing import compression
from builder.plumbing.paths import SymlinkLoop, resolve_in_root
from builder.plumbing.records import dataclass

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_OVERLAY_OPAQUE = "trusted.overlay.opaque"
# Upper-dir xattrs that mean "the real data lives in a lower layer": such a dir cannot be turned
# into a self-contained layer. Mount overlays with redirect_dir=off,metacopy=off.
_OVERLAY_INDIRECT = ("trusted.overlay.redirect", "trusted.overlay.metacopy")

_CHUNK = 1 << 20
_BLOCK = 512

_COMPRESSIONS = {"gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD, "none": OCI_LAYER, "uncompressed": OCI_LAYER}


class LayerError(StoreError):
    """A layer that cannot be written or read safely: malformed, hostile or unsupported."""


@dataclass(frozen=True)
class Layer:
    digest: str  # sha256 of the compressed blob
    diff_id: str  # sha256 of the uncompressed tar
    size: int  # compressed size in bytes
    media_type: str  # OCI_LAYER_GZIP, OCI_LAYER_ZSTD or OCI_LAYER


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """OCI ChainIDs: chain[0] = diff_id[0]; chain[n] = sha256(chain[n-1] + " " + diff_id[n])."""
    chain: list[str] = []
    for diff_id in diff_ids:
        if chain:
            diff_id = "sha256:" + hashlib.sha256(f"{chain[-1]} {diff_id}".encode()).hexdigest()
        chain.append(diff_id)
    return chain


def _kept_xattr(name: str) -> bool:
    """xattrs that belong in a layer: user.* and security.*, never overlay bookkeeping."""
    if name.startswith("user."):
        return not name.startswith("user.overlay.")
    return name.startswith("security.")


# ---------------------------------------------------------------------------------------------
# Writing: upper dir -> tar -> compressor -> blob store


class _BlobPipe:
    """The tar stream on its way into a blob, on a worker thread: compressed if asked, then
    written and hashed by the blob writer. sha256, zlib, ISA-L and zstd release the GIL, so the
    worker overlaps the main thread's reading of files and making of tar headers."""

    def __init__(self, blob: BlobWriter, compressor: compression.Compressor | None):
        self._blob = blob
        self._compressor = compressor
        # Bounded: at most 8 chunks (8 MiB) wait, so a large layer never sits in memory.
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="layer-write", daemon=True)
        self._thread.start()


    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep draining so the producer never blocks on a dead consumer
            try:
                self._blob.write(self._compressor.compress(data) if self._compressor else data)
            except BaseException as e:
                self._error = e
        if self._error is None and self._compressor is not None:
            try:
                self._blob.write(self._compressor.flush())
            except BaseException as e:
                self._error = e

    def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(data)

    def finish(self) -> None:
        self.abort()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


class _PlainBlobPipe(_BlobPipe):
    """An uncompressed tar on its way into a blob: written on one worker thread and hashed on
    another, so reading the files, hashing and writing all overlap. The digest is the diff_id."""

    def __init__(self, blob: BlobWriter):
        self._hash = hashlib.sha256()
        self._hash_queue: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self._hasher = threading.Thread(target=self._run_hash, name="layer-hash", daemon=True)
        self._hasher.start()
        super().__init__(blob, None)

    def _run_hash(self) -> None:
        while (data := self._hash_queue.get()) is not None:
            self._hash.update(data)

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            if self._error is not None:
                continue
            try:
                self._blob.write_unhashed(data)
            except BaseException as e:
                self._error = e

    def write(self, data: bytes) -> None:
        super().write(data)
        self._hash_queue.put(data)

    def abort(self) -> None:
        super().abort()
        if self._hasher.is_alive():
            self._hash_queue.put(None)
            self._hasher.join()

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


class _TarSink:
    """Buffers the tar stream into chunks, hashes it (the diff_id) unless the blob is the tar
    itself (then the blob's digest is the diff_id), and hands it on."""

    def __init__(self, out: _BlobPipe, hashed: bool):
        self._out = out
        self._buf = bytearray()
        self._hash = hashlib.sha256() if hashed else None

    def write(self, data: bytes | memoryview) -> None:
        if not self._buf and len(data) >= _CHUNK and isinstance(data, bytes):
            self._send(data)  # a file's whole chunk: on as it is, without copying it
            return
        self._buf += data
        if len(self._buf) >= _CHUNK:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            data = bytes(self._buf)
            self._buf.clear()
            self._send(data)

    def _send(self, data: bytes) -> None:
        if self._hash is not None:
            self._hash.update(data)
        self._out.write(data)

    @property
    def diff_id(self) -> str | None:
        return None if self._hash is None else "sha256:" + self._hash.hexdigest()


def _walk(root: str) -> Iterator[tuple[str, str, os.stat_result]]:
    """(relative path, absolute path, lstat) in pre-order, siblings sorted by their raw bytes."""

    def children(rel: str, path: str) -> list[tuple[str, str]]:
        names = sorted(os.listdir(path), key=os.fsencode, reverse=True)
        return [(f"{rel}/{n}" if rel else n, os.path.join(path, n)) for n in names]

    stack = children("", root)
    while stack:
        rel, path = stack.pop()
        st = os.lstat(path)
        yield rel, path, st
        if stat.S_ISDIR(st.st_mode):
            stack.extend(children(rel, path))


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:  # filesystem without xattrs
        return {}
    out = {}
    for name in names:
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:  # removed meanwhile, or not readable on this file type
            pass
    return out


def _is_overlay_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


class _LayerTarWriter:
    def __init__(self, sink: _TarSink, source_date_epoch: int | None):
        self._sink = sink
        self._epoch = source_date_epoch
        self._first_path_of_inode: dict[tuple[int, int], str] = {}

    def _mtime(self, st: os.stat_result) -> int:
        mtime = st.st_mtime_ns // 1_000_000_000
        if self._epoch is not None and mtime > self._epoch:
            return self._epoch
        return mtime

    def _header(self, name: str, st: os.stat_result, type_: bytes, *, mode: int | None = None,
                size: int = 0, linkname: str = "", xattrs: dict[str, bytes] | None = None) -> None:
        info = tarfile.TarInfo(name)
        info.type = type_
        info.mode = stat.S_IMODE(st.st_mode) if mode is None else mode
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname = info.gname = ""
        info.mtime = self._mtime(st)
        info.size = size
        info.linkname = linkname
        if type_ in (tarfile.CHRTYPE, tarfile.BLKTYPE):
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        for key in sorted(xattrs or ()):
            info.pax_headers["SCHILY.xattr." + key] = xattrs[key].decode("utf-8", "surrogateescape")
        self._sink.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def add(self, rel: str, path: str, st: os.stat_result) -> None:
        mode = st.st_mode
        if _is_overlay_whiteout(st):
            # Checked before hard links: overlayfs may share one whiteout inode between many names.
            parent, _, base = rel.rpartition("/")
            name = f"{parent}/{WHITEOUT_PREFIX}{base}" if parent else WHITEOUT_PREFIX + base
            self._header(name, st, tarfile.REGTYPE, mode=0o600)
            return
        if stat.S_ISSOCK(mode):
            return  # tar cannot hold sockets; a socket left by a build step is runtime state
        xattrs = _xattrs(path)
        for indirect in _OVERLAY_INDIRECT:
            if indirect in xattrs:
                raise LayerError(
                    f"{rel}: upper dir carries {indirect}; its data lives in a lower layer. "
                    "Mount the overlay with redirect_dir=off,metacopy=off"
                )
        opaque = stat.S_ISDIR(mode) and xattrs.get(_OVERLAY_OPAQUE) == b"y"
        kept = {k: v for k, v in xattrs.items() if _kept_xattr(k)}

        if not stat.S_ISDIR(mode) and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            first = self._first_path_of_inode.setdefault(key, rel)
            if first != rel:
                self._header(rel, st, tarfile.LNKTYPE, linkname=first)
                return

        if stat.S_ISDIR(mode):
            self._header(rel, st, tarfile.DIRTYPE, xattrs=kept)
            if opaque:
                # Right after its directory, before any child of this layer, so that even an
                # order-sensitive extractor cannot delete this layer's own files.
                self._header(f"{rel}/{OPAQUE_MARKER}", st, tarfile.REGTYPE, mode=stat.S_IMODE(mode) & 0o777)
        elif stat.S_ISREG(mode):
            self._header(rel, st, tarfile.REGTYPE, size=st.st_size, xattrs=kept)
            self._copy_file(rel, path, st.st_size)
        elif stat.S_ISLNK(mode):
            self._header(rel, st, tarfile.SYMTYPE, linkname=os.readlink(path), xattrs=kept)
        elif stat.S_ISCHR(mode):
            self._header(rel, st, tarfile.CHRTYPE, xattrs=kept)
        elif stat.S_ISBLK(mode):
            self._header(rel, st, tarfile.BLKTYPE, xattrs=kept)
        elif stat.S_ISFIFO(mode):
            self._header(rel, st, tarfile.FIFOTYPE, xattrs=kept)

    def _copy_file(self, rel: str, path: str, size: int) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            left = size
            while left:
                chunk = os.read(fd, min(left, _CHUNK))
                if not chunk:
                    raise LayerError(f"{rel}: file shrank while it was being archived")
                self._sink.write(chunk)
                left -= len(chunk)
        finally:
            os.close(fd)
        if size % _BLOCK:
            self._sink.write(bytes(_BLOCK - size % _BLOCK))

    def close(self) -> None:
        self._sink.write(bytes(2 * _BLOCK))  # end-of-archive marker, as Go's archive/tar writes it
        self._sink.flush()


def write_layer(upper_dir: str, blobs: BlobStore, *, compression: str = "uncompressed",
                level: int | None = None, source_date_epoch: int | None = None) -> Layer:
    """Archive an overlay upper dir as an OCI layer blob in BLOBS, in one streaming pass.

    The tar is deterministic: entries in sorted pre-order, PAX format, numeric owners with empty
    names, whole-second mtimes (clamped to SOURCE_DATE_EPOCH when given), no atime/ctime.
    A build commits its layers uncompressed (the blob's digest is then the diff_id); outputs
    that want them compressed ask `builder.snapshot.compressed.compressed_blob`.
    """
    media_type = _media_type(compression)
    return _write_layer_blob(blobs, compression, level, media_type,
                             lambda sink: _fill_layer_tar(sink, upper_dir, source_date_epoch))


@dataclass(frozen=True)
class LayerDigest:
    """What committing a layer records: its diff_id and the size of its uncompressed tar."""

    diff_id: str
    size: int


class _HashPipe:
    """The tar stream through sha256 on a worker thread (hashlib releases the GIL), so reading
    the files and hashing them overlap; nothing is written."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.size = 0
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self._thread = threading.Thread(target=self._run, name="layer-hash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            self._hash.update(data)

    def write(self, data: bytes) -> None:
        self.size += len(data)
        self._queue.put(data)

    def abort(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


def hash_layer(upper_dir: str, *, source_date_epoch: int | None = None) -> LayerDigest:
    """The diff_id and tar size of the layer `write_layer` would archive from UPPER_DIR, without
    storing it: what a build commits (the snapshot directory is the layer's content)."""
    pipe = _HashPipe()
    try:
        sink = _TarSink(pipe, hashed=False)
        _fill_layer_tar(sink, upper_dir, source_date_epoch)
    finally:
        pipe.abort()
    return LayerDigest(pipe.digest, pipe.size)


def stream_layer_tar(upper_dir: str, write, *, source_date_epoch: int | None = None) -> LayerDigest:
    """The layer tar of UPPER_DIR, byte for byte what `write_layer` stores, in chunks to
    WRITE(bytes); returns its diff_id and size (hashed on this thread)."""
    class _Out:
        size = 0

        def write(self, data: bytes) -> None:
            self.size += len(data)
            write(data)

    out = _Out()
    sink = _TarSink(out, hashed=True)
    _fill_layer_tar(sink, upper_dir, source_date_epoch)
    return LayerDigest(sink.diff_id, out.size)


def _fill_layer_tar(sink: "_TarSink", upper_dir: str, source_date_epoch: int | None) -> None:
    tar = _LayerTarWriter(sink, source_date_epoch)
    for rel, path, st in _walk(upper_dir):
        tar.add(rel, path, st)
    tar.close()


def _media_type(compression_name: str) -> str:
    try:
        return _COMPRESSIONS[compression_name]
    except KeyError:
        raise LayerError(f"unknown layer compression {compression_name!r}; use gzip, zstd or uncompressed") from None


def _write_layer_blob(blobs: BlobStore, compression_name: str, level: int | None, media_type: str, fill) -> Layer:
    """A layer blob: FILL(sink) writes the tar stream, which is hashed (the diff ID) and, unless
    COMPRESSION_NAME is uncompressed, compressed at LEVEL (None: the kind's default)."""
    plain = media_type == OCI_LAYER
    with blobs.writer() as blob:
        pipe = _PlainBlobPipe(blob) if plain else _BlobPipe(blob, compression.Compressor(compression_name, level))
        try:
            sink = _TarSink(pipe, hashed=not plain)
            fill(sink)
            pipe.finish()
        finally:
            pipe.abort()
        size = blob.size
        digest = blob.commit(hashed_as=pipe.digest) if plain else blob.commit()
    return Layer(digest=digest, diff_id=digest if plain else sink.diff_id, size=size, media_type=media_type)


def rewrite_layer_timestamps(stream: BinaryIO, blobs: BlobStore, epoch: int, *, media_type: str = OCI_LAYER_GZIP) -> Layer:
    """A copy of a layer this project wrote with every mtime newer than EPOCH clamped to it
    (BuildKit's rewrite-timestamp on export). The copy is byte for byte the layer `write_layer`
    makes from the same tree with SOURCE_DATE_EPOCH=EPOCH: headers are re-encoded the same way."""
    compression_name = next((name for name, media in _COMPRESSIONS.items() if media == media_type), None)
    if compression_name is None:
        raise LayerError(f"cannot rewrite timestamps of a layer of type {media_type}")
    def fill(sink: _TarSink) -> None:
        try:
            with compression.decompressed(stream) as source, \
                    tarfile.open(fileobj=source, mode="r|", errors="surrogateescape") as tf:
                for info in tf:
                    for key in ("mtime", "atime", "ctime"):
                        info.pax_headers.pop(key, None)
                    info.mtime = min(int(info.mtime), epoch)
                    sink.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
                    if info.isreg() and info.size:
                        data = tf.extractfile(info)
                        while chunk := data.read(_CHUNK):
                            sink.write(chunk)
                        if info.size % _BLOCK:
                            sink.write(bytes(_BLOCK - info.size % _BLOCK))
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, compression.CorruptStream) as e:
            raise LayerError(f"corrupt layer: {e}") from None
        sink.write(bytes(2 * _BLOCK))
        sink.flush()

    return _write_layer_blob(blobs, compression_name, None, media_type, fill)


# ---------------------------------------------------------------------------------------------
# Reading: blob -> (decompress by magic) -> tar -> directory


def _clean_name(name: str) -> list[str]:
    """Entry name -> path components inside the root. Leading `/` is dropped; `..` is refused."""
    if "\x00" in name:
        raise LayerError(f"layer entry {name!r} has a NUL byte in its name")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise LayerError(f"layer entry {name!r} climbs out of the root with '..'")
    return parts


# ---------------------------------------------------------------------------------------------
# Bounds on what an extraction writes. A tar is small for what it can unpack to: a sparse member
# of a few KiB claims any size, and plain data only costs its compressed size. Each bound can be
# set in the environment (bytes, or with a K/M/G/T suffix).

MAX_FILE_SIZE_ENV = "BUILD_IMAGE_MAX_FILE_SIZE"
MAX_UNPACK_BYTES_ENV = "BUILD_IMAGE_MAX_UNPACK_BYTES"
DEFAULT_MAX_FILE_SIZE = 64 << 30
DEFAULT_MAX_UNPACK_BYTES = 256 << 30
_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _size_from_env(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip().upper().removesuffix("IB").removesuffix("B")
    if not text:
        return default
    number, suffix = (text[:-1], text[-1]) if text[-1] in _SUFFIXES else (text, "")
    if not number.isdigit() or int(number) == 0:
        raise LayerError(f"{name}={os.environ[name]!r}: expected a positive size such as 64G")
    return int(number) * _SUFFIXES[suffix]


def _human(size: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.4g} {unit}"
    return f"{size} bytes"


class UnpackBudget:
    """Accounts the data bytes one extraction writes and the size each file claims."""

    def __init__(self, max_file_size: int | None = None, max_bytes: int | None = None):
        self.max_file_size = max_file_size or _size_from_env(MAX_FILE_SIZE_ENV, DEFAULT_MAX_FILE_SIZE)
        self.max_bytes = max_bytes or _size_from_env(MAX_UNPACK_BYTES_ENV, DEFAULT_MAX_UNPACK_BYTES)
        self.written = 0

    def check_file(self, info: tarfile.TarInfo) -> None:
        if info.size > self.max_file_size:
            raise LayerError(f"{info.name!r} is {_human(info.size)}, more than the {_human(self.max_file_size)} "
                             f"a file may be (set {MAX_FILE_SIZE_ENV} to allow it)")

    def spend(self, size: int) -> None:
        self.written += size
        if self.written > self.max_bytes:
            raise LayerError(f"unpacking writes more than {_human(self.max_bytes)} of data "
                             f"(set {MAX_UNPACK_BYTES_ENV} to allow it)")


def member_regions(tf: tarfile.TarFile, info: tarfile.TarInfo, budget: UnpackBudget) -> Iterator[tuple[int, bytes]]:
    """(offset, data) runs of regular member INFO: one run, or a sparse member's data runs (old GNU
    or PAX sparse) with its holes left out, so that they can stay holes on disk."""
    budget.check_file(info)
    regions = [(o, n) for o, n in info.sparse if n] if info.sparse is not None else [(0, info.size)]
    end = 0
    for offset, length in regions:
        if offset < end or offset + length > info.size:
            raise LayerError(f"{info.name!r}: sparse map out of order or beyond the file's size")
        end = offset + length
    # The unbuffered reader below tarfile's buffered one: it seeks by just moving its position
    # (the stream underneath only ever goes forward), where the buffered one refuses a pipe.
    data = tf.extractfile(info).raw
    for offset, length in regions:
        data.seek(offset)
        while length:
            chunk = data.read(min(length, _CHUNK))
            if not chunk:
                raise LayerError(f"{info.name!r}: truncated data")
            budget.spend(len(chunk))
            yield offset, chunk
            offset += len(chunk)
            length -= len(chunk)


_HOLE = 64 << 10
_ZEROS = bytes(_HOLE)


def write_member(tf: tarfile.TarFile, info: tarfile.TarInfo, fd: int, budget: UnpackBudget) -> None:
    """Regular member INFO's data into the empty file FD. Holes are seeked over, never written: a
    sparse member's, and every aligned 64 KiB of zeros in plain data too (as `cp --sparse=always`),
    since layers that Go's archive/tar wrote spell a sparse file out in full."""
    for offset, chunk in member_regions(tf, info, budget):
        at = 0  # bytes slices, not memoryviews: bytes == bytes is a memcmp, 30x faster here
        while at < len(chunk):
            piece = chunk[at:at + _HOLE - offset % _HOLE]
            if len(piece) < _HOLE or piece != _ZEROS:
                piece = piece[:os.pwrite(fd, piece, offset)]
            at, offset = at + len(piece), offset + len(piece)
    os.ftruncate(fd, info.size)


def _disk_reason(error: OSError) -> str:
    """An OSError as words for a user: no errno number, no path."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the store's disk"
    return (error.strerror or type(error).__name__).lower()


def _remove(path: str) -> None:
    """Delete whatever is at PATH, never following a symlink."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


class _Extractor:
    """Writes tar entries under ROOT; OVERLAY picks how whiteouts are recorded (or applied)."""

    def __init__(self, root: str, overlay: bool, budget: UnpackBudget | None = None):
        self.root = os.path.abspath(root)
        self.overlay = overlay
        self.budget = budget or UnpackBudget()
        self.is_root = os.geteuid() == 0
        self.written: set[str] = set()  # real paths (relative) this layer wrote
        self.dir_meta: list[tuple[str, tarfile.TarInfo]] = []
        self._parents: dict[tuple[str, ...], str] = {}

    # -- path resolution -------------------------------------------------------------------

    def _resolve_dir(self, parts: Sequence[str], create: bool) -> str | None:
        """Real relative path of directory PARTS, following symlinks as if ROOT were `/`.

        Missing directories are made (0755) when CREATE, else None is returned. A non-directory
        on the way is an error. The result never leaves ROOT.
        """
        key = tuple(parts)
        cached = self._parents.get(key)
        if cached is not None:
            return cached
        where = "/".join(parts)
        try:
            host = resolve_in_root(self.root, where, make_dirs=create)
        except SymlinkLoop:
            raise LayerError(f"too many levels of symlinks under {where!r}") from None
        except NotADirectoryError as e:
            raise LayerError(f"{where!r}: {e.filename!r} is not a directory") from None
        if not create:
            if not os.path.lexists(host):
                return None
            if not os.path.isdir(host):
                raise LayerError(f"{where!r}: {os.path.relpath(host, self.root)!r} is not a directory")
        result = os.path.relpath(host, self.root)
        result = "" if result == "." else result
        self._parents[key] = result
        return result

    def _forget_resolutions(self) -> None:
        self._parents.clear()

    def _abs(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    # -- entries ---------------------------------------------------------------------------

    def extract(self, tf: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        parts = _clean_name(info.name)
        if not parts:
            return  # the root itself: its attributes belong to whoever owns ROOT
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parts[:-1], base, info)
            return
        parent = self._resolve_dir(parts[:-1], create=True)
        rel = f"{parent}/{base}" if parent else base
        path = self._abs(rel)

        if info.isdir():
            try:
                existing_dir = stat.S_ISDIR(os.lstat(path).st_mode)
            except FileNotFoundError:
                existing_dir = False
            if not existing_dir:
                self._replace(path)
                os.mkdir(path, 0o700)
            self._own(path, info)
            self._set_xattrs(path, info)
            self.dir_meta.append((rel, info))
        elif info.isreg():
            self._replace(path)
            self._write_file(path, tf, info)
        elif info.issym():
            self._replace(path)
            os.symlink(info.linkname, path)
            self._own(path, info)
            os.utime(path, ns=(self._ns(info), self._ns(info)), follow_symlinks=False)
        elif info.islnk():
            target = self._link_target(info)
            self._replace(path)
            os.link(target, path, follow_symlinks=False)
        elif info.ischr() or info.isblk():
            if not self.is_root:
                return  # device nodes only as root, as tar does
            self._replace(path)
            kind = stat.S_IFCHR if info.ischr() else stat.S_IFBLK
            os.mknod(path, kind | 0o600, os.makedev(info.devmajor, info.devminor))
            self._finish_special(path, info)
        elif info.isfifo():
            self._replace(path)
            os.mkfifo(path, 0o600)
            self._finish_special(path, info)
        else:
            return  # other tar types (sparse leftovers, volume labels) carry no file
        self.written.add(rel)

    def _replace(self, path: str) -> None:
        if os.path.lexists(path):
            _remove(path)
            self._forget_resolutions()

    def _link_target(self, info: tarfile.TarInfo) -> str:
        parts = _clean_name(info.linkname)
        if not parts:
            raise LayerError(f"hard link {info.name!r} points at the root directory")
        parent = self._resolve_dir(parts[:-1], create=False)
        target = None if parent is None else self._abs(f"{parent}/{parts[-1]}" if parent else parts[-1])
        if target is None or not os.path.lexists(target):
            raise LayerError(f"hard link {info.name!r} -> {info.linkname!r}: target is not in the layer")
        if stat.S_ISDIR(os.lstat(target).st_mode):
            raise LayerError(f"hard link {info.name!r} -> {info.linkname!r}: target is a directory")
        return target

    def _whiteout(self, parent_parts: list[str], base: str, info: tarfile.TarInfo) -> None:
        victim = base[len(WHITEOUT_PREFIX):]
        if base != OPAQUE_MARKER and victim.startswith(WHITEOUT_PREFIX):
            return  # aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs): not a deletion
        if victim in ("", ".", ".."):
            raise LayerError(f"malformed whiteout {'/'.join(parent_parts + [base])!r}")
        if self.overlay and not self.is_root:
            raise LayerError("unpacking whiteouts as an overlay lower dir needs root "
                             "(char devices and trusted.* xattrs)")
        parent = self._resolve_dir(parent_parts, create=self.overlay)
        if parent is None:
            return  # nothing below a missing directory to hide
        if base == OPAQUE_MARKER:
            if self.overlay:
                os.setxattr(self._abs(parent), _OVERLAY_OPAQUE, b"y", follow_symlinks=False)
            else:
                self._empty_except_written(parent)
            return
        rel = f"{parent}/{victim}" if parent else victim
        if rel in self.written:
            return  # a whiteout hides lower layers only, never this layer's own entries
        path = self._abs(rel)
        if self.overlay:
            _remove(path)
            os.mknod(path, stat.S_IFCHR | 0o600, 0)
            self._own(path, info)
            os.utime(path, ns=(self._ns(info), self._ns(info)), follow_symlinks=False)
        else:
            _remove(path)
        self._forget_resolutions()

    def _empty_except_written(self, rel_dir: str) -> None:
        """Opaque marker on a flat tree: drop what lower layers put here, keep this layer's."""
        dir_path = self._abs(rel_dir)
        for name in os.listdir(dir_path):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            path = os.path.join(dir_path, name)
            if rel not in self.written:
                _remove(path)
            elif stat.S_ISDIR(os.lstat(path).st_mode):
                self._empty_except_written(rel)
        self._forget_resolutions()

    # -- metadata --------------------------------------------------------------------------

    @staticmethod
    def _ns(info: tarfile.TarInfo) -> int:
        return int(info.mtime * 1_000_000_000)

    def _own(self, path_or_fd: str | int, info: tarfile.TarInfo) -> None:
        if self.is_root:
            if isinstance(path_or_fd, int):
                os.fchown(path_or_fd, info.uid, info.gid)
            else:
                os.chown(path_or_fd, info.uid, info.gid, follow_symlinks=False)

    def _set_xattrs(self, path_or_fd: str | int, info: tarfile.TarInfo) -> None:
        for key, value in sorted(info.pax_headers.items()):
            if not key.startswith("SCHILY.xattr."):
                continue
            name = key[len("SCHILY.xattr."):]
            if not _kept_xattr(name):
                continue  # trusted.* (overlay bookkeeping above all) and system.* never come in
            try:
                if isinstance(path_or_fd, int):
                    os.setxattr(path_or_fd, name, value.encode("utf-8", "surrogateescape"))
                else:
                    os.setxattr(path_or_fd, name, value.encode("utf-8", "surrogateescape"),
                                follow_symlinks=False)
            except OSError as e:
                # Without root, security.* is refused; a filesystem may not hold xattrs at all.
                if self.is_root and e.errno != errno.EOPNOTSUPP:
                    raise LayerError(f"{info.name!r}: cannot set xattr {name}: {e.strerror}") from None

    def _write_file(self, path: str, tf: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            write_member(tf, info, fd, self.budget)
            self._own(fd, info)  # chown before chmod (it clears setuid) and xattrs (it clears caps)
            os.fchmod(fd, info.mode & 0o7777)
            self._set_xattrs(fd, info)
            os.utime(fd, ns=(self._ns(info), self._ns(info)))
        finally:
            os.close(fd)

    def _finish_special(self, path: str, info: tarfile.TarInfo) -> None:
        self._own(path, info)
        os.chmod(path, info.mode & 0o7777)
        self._set_xattrs(path, info)
        os.utime(path, ns=(self._ns(info), self._ns(info)), follow_symlinks=False)

    def finish(self) -> None:
        # Directory modes and mtimes last: writing children would change the mtimes, and a
        # read-only directory mode could stop the children from being written at all.
        for rel, info in self.dir_meta:
            path = self._abs(rel)
            try:
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    continue
            except FileNotFoundError:
                continue  # removed later in the layer
            os.chmod(path, info.mode & 0o7777)
            os.utime(path, ns=(self._ns(info), self._ns(info)), follow_symlinks=False)


def _extract(stream: BinaryIO, root: str, overlay: bool) -> None:
    extractor = _Extractor(root, overlay)
    _read_layer(stream, extractor.extract)
    extractor.finish()


def _read_layer(stream: BinaryIO, handle, hash_tar: bool = False) -> str:
    """Every entry of the layer in STREAM through HANDLE(tf, info), then the stream to its end;
    the diff_id (the digest of the decompressed tar) when HASH_TAR, else ""."""
    name = ""
    try:
        with compression.decompressed(stream) as source:
            tar_stream = _Counting(source, hash_tar)
            try:
                with tarfile.open(fileobj=tar_stream, mode="r|", errors="surrogateescape") as tf:
                    for info in tf:
                        name = info.name
                        handle(tf, info)
                    end_of_entries = tf.offset
            except (tarfile.TarError, EOFError, zlib.error) as e:
                raise LayerError(f"corrupt layer tar: {e}") from None
            except gzip.BadGzipFile as e:
                raise LayerError(f"corrupt gzip layer: {e}") from None
            except OSError as e:
                raise LayerError(f"cannot unpack {name!r}: {_disk_reason(e)}") from None
            try:  # to the end, so gzip checks its CRC and zstd its frame: a truncated blob fails
                while tar_stream.read(_CHUNK):
                    pass
            except (OSError, EOFError, zlib.error) as e:
                raise LayerError(f"corrupt layer: {e}") from None
            if (tar_stream.size - end_of_entries) % _BLOCK:
                # tarfile takes a header cut short for the end of the archive; Go's archive/tar
                # and GNU tar call it an unexpected EOF, and so does this
                raise LayerError("corrupt layer tar: truncated after its last complete entry")
    except compression.CorruptStream as e:
        raise LayerError(f"corrupt layer: {e}") from None
    return "sha256:" + tar_stream.hash.hexdigest() if hash_tar else ""


class _Counting:
    """A read-only stream that counts (and when asked hashes) what is read through it."""

    def __init__(self, stream: BinaryIO, hash_it: bool):
        self._stream = stream
        self.hash = hashlib.sha256() if hash_it else None
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.size += len(data)
        if self.hash is not None:
            self.hash.update(data)
        return data


def unpack_layer(stream: BinaryIO, dest_dir: str) -> None:
    """Extract a layer (gzip, zstd or plain tar) into empty DEST_DIR as an overlay lower dir:
    `.wh.x` becomes a char device 0:0 `x`, `.wh..wh..opq` the xattr trusted.overlay.opaque=y."""
    if os.listdir(dest_dir):
        raise LayerError(f"unpack destination {dest_dir} is not empty")
    _extract(stream, dest_dir, overlay=True)


def apply_layer(stream: BinaryIO, root_dir: str) -> None:
    """Flatten a layer onto the root filesystem at ROOT_DIR: whiteouts delete the named path,
    opaque markers empty their directory of everything this layer did not write."""
    _extract(stream, root_dir, overlay=False)


# ---------------------------------------------------------------------------------------------
# Checking without writing: what `load` and `import` do before they store a layer


class _Shadow:
    """The tree a layer would unpack to, by kind only: what `_Extractor` checks, minus the disk.

    Kinds: "dir", "file" (any non-directory) or ("link", target) for a symlink. The layer is
    taken as unpacked alone into an empty directory, as `unpack_layer` does for FROM.
    """

    def __init__(self, budget: UnpackBudget):
        self.kinds: dict[str, object] = {}
        self.written: set[str] = set()
        self.budget = budget

    def _resolve_dir(self, parts: Sequence[str], create: bool) -> str | None:
        """As `resolve_in_root`: symlinks followed inside the root; a missing dir made or None."""
        done: list[str] = []
        pending = list(parts)
        hops = 0
        while pending:
            part = pending.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if done:
                    done.pop()
                continue
            candidate = "/".join(done + [part])
            kind = self.kinds.get(candidate)
            if isinstance(kind, tuple):
                hops += 1
                if hops > 40:
                    raise LayerError(f"too many levels of symlinks under {'/'.join(parts)!r}")
                if kind[1].startswith("/"):
                    done = []
                pending = kind[1].split("/") + pending
                continue
            if kind == "file":
                raise LayerError(f"{'/'.join(parts)!r}: {candidate!r} is not a directory")
            if kind is None:
                if not create:
                    return None
                self.kinds[candidate] = "dir"
            done.append(part)
        return "/".join(done)

    def _replace(self, rel: str, kind: object) -> None:
        if self.kinds.get(rel) == "dir" and kind != "dir":
            prefix = rel + "/"
            for key in [k for k in self.kinds if k.startswith(prefix)]:
                del self.kinds[key]
        self.kinds[rel] = kind

    def check(self, tf: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        parts = _clean_name(info.name)
        if not parts:
            return
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX):
            victim = base[len(WHITEOUT_PREFIX):]
            if base != OPAQUE_MARKER and victim.startswith(WHITEOUT_PREFIX):
                return
            if victim in ("", ".", ".."):
                raise LayerError(f"malformed whiteout {'/'.join(parts)!r}")
            parent = self._resolve_dir(parts[:-1], create=True)
            rel = f"{parent}/{victim}" if parent else victim
            if base != OPAQUE_MARKER and rel not in self.written:
                self._replace(rel, "file")  # unpacked as a char device 0:0
            return
        parent = self._resolve_dir(parts[:-1], create=True)
        rel = f"{parent}/{base}" if parent else base
        if info.isdir():
            if self.kinds.get(rel) != "dir":
                self._replace(rel, "dir")
        elif info.isreg():
            for _ in member_regions(tf, info, self.budget):
                pass
            self._replace(rel, "file")
        elif info.issym():
            self._replace(rel, ("link", info.linkname))
        elif info.islnk():
            self._check_link_target(info)
            self._replace(rel, "file")
        elif info.ischr() or info.isblk() or info.isfifo():
            self._replace(rel, "file")
        else:
            return
        self.written.add(rel)

    def _check_link_target(self, info: tarfile.TarInfo) -> None:
        parts = _clean_name(info.linkname)
        if not parts:
            raise LayerError(f"hard link {info.name!r} points at the root directory")
        parent = self._resolve_dir(parts[:-1], create=False)
        target = None if parent is None else (f"{parent}/{parts[-1]}" if parent else parts[-1])
        kind = None if target is None else self.kinds.get(target)
        if kind is None:
            raise LayerError(f"hard link {info.name!r} -> {info.linkname!r}: target is not in the layer")
        if kind == "dir":
            raise LayerError(f"hard link {info.name!r} -> {info.linkname!r}: target is a directory")


def check_layer(stream: BinaryIO, budget: UnpackBudget | None = None) -> str:
    """Read the layer in STREAM (gzip, zstd or plain tar) to its end as `unpack_layer` would,
    writing nothing, and return its diff_id. LayerError for what unpacking would refuse: `..`
    entries, hard links to no earlier entry of the layer, malformed whiteouts, truncated or
    corrupt data, a file or a total beyond the unpack bounds."""
    shadow = _Shadow(budget or UnpackBudget())
    return _read_layer(stream, shadow.check, hash_tar=True)
