"""Exporters: turn a stored image into something other tools read.

    OCIArchiveExporter     OCI image layout as one tar (skopeo `oci-archive:`, `buildctl --output type=oci`)
    DockerArchiveExporter  `docker save` format (`docker load`, skopeo `docker-archive:`)
    OCILayoutExporter      OCI image layout as a directory (umoci, skopeo `oci:`)
    LocalExporter          the image's flattened root filesystem as a directory
    RootfsTarExporter      the same as one tar (BuildKit's `type=tar`)

Archives are written to a temp file beside the destination and renamed into place, so a failed export
leaves nothing behind; a destination of `-` is the standard output (streamed, never seeked). Their entries are deterministic (sorted, mtime 0, owner 0:0), and blobs are streamed
from the store, checked against their digests on the way, never read whole into memory.

The docker archive is also a complete OCI layout (as Docker 25's `docker save` and BuildKit's docker exporter
write it): manifest.json points at the layout's blobs, `blobs/sha256/<hex>`, which Docker 20.10's
`docker load` and skopeo's `docker-archive:` both follow. gzip layers are shipped as stored (both loaders
detect compression by content); zstd layers, which Docker 20.10 cannot load, are shipped decompressed as well,
named by their diff_id, while the OCI side keeps the zstd blobs its manifest names.

Media types follow BuildKit's `oci-mediatypes` defaults (manifest.for_output does the converting): OCI's in
the OCI layout and archive, Docker's in the docker archive (BuildKit's documented docker exporter default),
whichever family the base image came with. Either takes the other family when asked; the image ID and layer
digests are the same in all of them. (A docker archive with Docker types is still a valid layout, but skopeo's
`oci-archive:` only finds OCI-typed index entries: `oci-mediatypes=true` makes one it reads, as Docker 25's.)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import tempfile
from typing import BinaryIO, Callable, Iterator, Protocol, Sequence

from builder.cache.blobs import BlobStore
from builder.errors import DigestMismatch, ExportError
from builder.image.manifest import OutputManifest, StoredImage, for_output, index_bytes
from builder.image.media import Descriptor
from builder.plumbing import compression, files, sparse
from builder.plumbing.canonical import canonical_json

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"
OCI_LAYOUT_FILE = canonical_json({"imageLayoutVersion": "1.0.0"})

_CHUNK = 1 << 20


class Exporter(Protocol):
    def export(self, image: StoredImage, blobs: BlobStore) -> None: ...


# --- exporters ------------------------------------------------------------------------------------


class OCIArchiveExporter:
    """The OCI image layout (oci-layout, index.json, blobs/sha256/...) as a tar file at DEST."""

    def __init__(self, dest: str, names: Sequence[str] = (), oci_mediatypes: bool = True):
        self.dest = dest
        self.names = tuple(names)
        self.oci_mediatypes = oci_mediatypes

    def export(self, image: StoredImage, blobs: BlobStore) -> None:
        out = for_output(blobs, image, self.oci_mediatypes)
        files = {"oci-layout": OCI_LAYOUT_FILE, "index.json": _layout_index(out.image, self.names),
                 **_manifest_file(out)}
        _write_archive(self.dest, files, _image_blobs(out.image), blobs)


class DockerArchiveExporter:
    """`docker save` format: manifest.json, repositories, config and layers; also a valid OCI layout."""

    def __init__(self, dest: str, names: Sequence[str] = (), oci_mediatypes: bool = False):
        self.dest = dest
        self.names = tuple(names)
        self.oci_mediatypes = oci_mediatypes

    def export(self, image: StoredImage, blobs: BlobStore) -> None:
        out = for_output(blobs, image, self.oci_mediatypes)
        image = out.image
        with contextlib.ExitStack() as cleanup:
            layer_paths, extra_files = [], {}
            for layer, diff_id in zip(image.layers, image.config.diff_ids):
                if _compression(blobs, layer) == "zstd":
                    # Docker 20.10's `docker load` cannot read zstd; ship the tar itself, named by its digest.
                    path = cleanup.enter_context(_decompressed_copy(blobs, layer, diff_id))
                    extra_files[_blob_path(diff_id)] = path
                    layer_paths.append(_blob_path(diff_id))
                else:
                    layer_paths.append(_blob_path(layer.digest))
            repo_tags = [t for t in (_docker_repo_tag(n) for n in self.names) if t]
            entry = {"Config": _blob_path(image.config_descriptor.digest), "RepoTags": repo_tags,
                     "Layers": layer_paths}
            files = {
                "manifest.json": canonical_json([entry]),
                "oci-layout": OCI_LAYOUT_FILE,
                "index.json": _layout_index(image, self.names),
                **_manifest_file(out),
            }
            if repo_tags and layer_paths:
                # Legacy file for loaders older than manifest.json: repository -> tag -> top layer.
                top = layer_paths[-1].rsplit("/", 1)[-1]
                repositories: dict[str, dict[str, str]] = {}
                for repo_tag in repo_tags:
                    repo, _, tag = repo_tag.rpartition(":")
                    repositories.setdefault(repo, {})[tag] = top
                files["repositories"] = canonical_json(repositories)
            _write_archive(self.dest, files, _image_blobs(image), blobs, extra_files)


class OCILayoutExporter:
    """The OCI image layout as a directory at DEST.

    A new (or empty) DEST is staged beside it and renamed into place. An existing layout is added to, as
    skopeo and umoci do: new blobs first, then index.json replaced atomically, where an entry with the same
    name is replaced. Anything else at DEST is refused rather than overwritten.
    """

    def __init__(self, dest: str, names: Sequence[str] = (), oci_mediatypes: bool = True):
        self.dest = dest
        self.names = tuple(names)
        self.oci_mediatypes = oci_mediatypes

    def export(self, image: StoredImage, blobs: BlobStore) -> None:
        out = for_output(blobs, image, self.oci_mediatypes)
        try:
            if _is_empty_or_missing(self.dest):
                with _staging_dir(self.dest) as stage:
                    _fill_layout(stage, out, self.names, blobs, [])
                    os.chmod(stage, 0o755)
                    os.rename(stage, self.dest)
                return
            if not os.path.isfile(os.path.join(self.dest, "oci-layout")):
                raise ExportError(f"{self.dest} exists and is not an OCI image layout; refusing to overwrite it")
            _fill_layout(self.dest, out, self.names, blobs, _read_index_entries(self.dest))
        except OSError as e:
            raise ExportError(f"cannot write OCI layout {self.dest}: {e}") from e


class LocalExporter:
    """The image's root filesystem, layers applied in order, into directory DEST.

    Layers are applied in a staging directory beside DEST, so a failure leaves DEST as it was; the result
    is then renamed into place, or merged into DEST when it already has content (existing files of the
    same name are replaced, others kept, symlinks in DEST never followed). APPLY_LAYER flattens one
    layer's tar stream onto a directory (the snapshot package's apply_layer: image does not import it).
    """

    def __init__(self, dest: str, apply_layer: Callable[[BinaryIO, str], None]):
        self.dest = dest
        self._apply_layer = apply_layer

    def export(self, image: StoredImage, blobs: BlobStore) -> None:
        if os.path.lexists(self.dest) and (os.path.islink(self.dest) or not os.path.isdir(self.dest)):
            raise ExportError(f"{self.dest} exists and is not a directory")
        try:
            with _staging_dir(self.dest) as stage:
                os.chmod(stage, 0o755)
                for layer in image.layers:
                    with _uncompressed(blobs, layer) as stream:
                        self._apply_layer(stream, stage)
                if _is_empty_or_missing(self.dest):
                    os.rename(stage, self.dest)
                else:
                    _merge_tree(stage, self.dest)
        except OSError as e:
            raise ExportError(f"cannot export the root filesystem to {self.dest}: {e}") from e


class RootfsTarExporter:
    """The image's root filesystem, layers applied in order, as one tar at DEST (or `-`): what
    BuildKit's tar exporter writes. Sorted entries, numeric owners, hard links kept."""

    def __init__(self, dest: str, apply_layer: Callable[[BinaryIO, str], None]):
        self.dest = dest
        self._apply_layer = apply_layer

    def export(self, image: StoredImage, blobs: BlobStore) -> None:
        with _staging_dir(self.dest if self.dest != STDOUT else os.path.join(blobs.tmp_dir, "rootfs")) as stage:
            os.chmod(stage, 0o755)
            for layer in image.layers:
                with _uncompressed(blobs, layer) as stream:
                    self._apply_layer(stream, stage)
            write_file_atomically(self.dest, lambda out: write_tree_tar(stage, out))


def write_tree_tar(root: str, out: BinaryIO) -> None:
    """ROOT's tree as a tar stream: sorted entries, numeric owners, hard links kept as links."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for entry in sorted(dirnames + filenames):
                path = os.path.join(dirpath, entry)
                info = tar.gettarinfo(path, arcname=os.path.relpath(path, root))
                if info is None:  # a socket: tar has no type for it
                    continue
                info.uname = info.gname = ""
                if info.isreg():
                    with open(path, "rb") as f:
                        st = os.fstat(f.fileno())
                        regions = sparse.data_regions(f.fileno(), st.st_size, st.st_blocks)
                        if regions is None:
                            tar.addfile(info, f)
                        else:
                            _add_sparse(tar, info, f.fileno(), regions)
                else:
                    tar.addfile(info)


def _add_sparse(tar: tarfile.TarFile, info: tarfile.TarInfo, fd: int, regions: list[tuple[int, int]]) -> None:
    """A file with holes as a PAX 1.0 sparse member: its data runs only (plumbing.sparse)."""
    member, sparse_map = sparse.sparse_member(info, regions)
    tar.addfile(member, _SparseReader(fd, sparse_map, regions))


class _SparseReader:
    """The stored bytes of a sparse member: its map, then each data run read with pread. Reads
    are whole (tarfile's copy takes a short read for the end of the data)."""

    def __init__(self, fd: int, sparse_map: bytes, regions: list[tuple[int, int]]):
        self._buffer = bytearray(sparse_map)
        self._runs = [(offset, length) for offset, length in regions if length]
        self._fd = fd

    def read(self, size: int = -1) -> bytes:
        while self._runs and (size < 0 or len(self._buffer) < size):
            offset, length = self._runs.pop(0)
            take = min(length, _CHUNK)
            data = os.pread(self._fd, take, offset)
            if len(data) != take:
                raise ExportError("a sparse file shrank while it was being exported")
            if take < length:
                self._runs.insert(0, (offset + take, length - take))
            self._buffer += data
        size = len(self._buffer) if size < 0 else size
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data


# --- index entries and names ----------------------------------------------------------------------


def _index_entries(image: StoredImage, names: Sequence[str]) -> list[Descriptor]:
    """One index.json entry per name (as containerd's archive exporter writes them), or one unnamed."""
    base = image.manifest
    if not names:
        return [Descriptor(base.media_type, base.digest, base.size, platform=base.platform)]
    entries = []
    for name in names:
        annotations = {ANNOTATION_CONTAINERD_NAME: name}
        ref = oci_ref_name(name)
        if ref:
            annotations[ANNOTATION_REF_NAME] = ref
        entries.append(Descriptor(base.media_type, base.digest, base.size,
                                  annotations=tuple(sorted(annotations.items())), platform=base.platform))
    return entries


def _layout_index(image: StoredImage, names: Sequence[str]) -> bytes:
    return index_bytes(_index_entries(image, names))


def oci_ref_name(name: str) -> str:
    """The `org.opencontainers.image.ref.name` for NAME: its tag (what skopeo's `oci:DIR:TAG` and
    umoci's `--image DIR:TAG` match), "latest" when untagged, "" for a digest-only reference."""
    repo, at, _ = name.partition("@")
    last = repo.rsplit("/", 1)[-1]
    if ":" in last:
        return last.partition(":")[2]
    return "" if at else "latest"


def _docker_repo_tag(name: str) -> str:
    """NAME as `docker save` writes RepoTags: familiar form ("app:1", "user/app:1"), tag required."""
    if "@" in name:
        return ""  # RepoTags only holds tags; docker load cannot tag by digest
    repo, tag = name, "latest"
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        repo, _, tag = name.rpartition(":")
    for prefix in ("docker.io/library/", "docker.io/"):
        rest = repo[len(prefix):]
        if repo.startswith(prefix) and (prefix == "docker.io/" or "/" not in rest):
            repo = rest
            break
    return f"{repo}:{tag}"


def _image_blobs(image: StoredImage) -> list[Descriptor]:
    """The config and layer blobs the image needs, each once, in a stable order (its manifest is the
    output's own bytes: see _manifest_file)."""
    seen: dict[str, Descriptor] = {}
    for desc in (image.config_descriptor, *image.layers):
        seen.setdefault(desc.digest, desc)
    return sorted(seen.values(), key=lambda d: d.digest)


def _manifest_file(out: OutputManifest) -> dict[str, bytes]:
    """The manifest as the output writes it, as an archive member."""
    return {_blob_path(out.image.manifest.digest): out.data}


def _blob_path(digest: str) -> str:
    algorithm, _, hexpart = digest.partition(":")
    return f"blobs/{algorithm}/{hexpart}"


# --- archives -------------------------------------------------------------------------------------


def _write_archive(dest: str, files: dict[str, bytes], blob_descs: list[Descriptor], blobs: BlobStore,
                   local_files: dict[str, str] | None = None) -> None:
    """A tar of FILES (name -> bytes), the store's BLOB_DESCS under blobs/, and LOCAL_FILES (name -> path)."""
    def write(out: BinaryIO) -> None:
        # Build the member list first so the whole archive is sorted by name, directories included.
        members: dict[str, bytes | Descriptor | str | None] = {"blobs": None, "blobs/sha256": None}
        members.update(files)
        members.update((_blob_path(d.digest), d) for d in blob_descs)
        members.update(local_files or {})
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT, copybufsize=_CHUNK) as tar:
            for name, content in sorted(members.items(), key=lambda member: member[0]):
                if content is None:
                    tar.addfile(_tarinfo(name, tarfile.DIRTYPE, 0o755))
                elif isinstance(content, bytes):
                    tar.addfile(_tarinfo(name, tarfile.REGTYPE, 0o644, len(content)), io.BytesIO(content))
                elif isinstance(content, str):
                    with open(content, "rb") as f:
                        tar.addfile(_tarinfo(name, tarfile.REGTYPE, 0o644, os.fstat(f.fileno()).st_size), f)
                else:
                    _add_blob(tar, name, content, blobs)

    write_file_atomically(dest, write)


def _tarinfo(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add_blob(tar: tarfile.TarFile, name: str, desc: Descriptor, blobs: BlobStore) -> None:
    size = blobs.size(desc.digest)
    if size != desc.size:
        raise ExportError(f"blob {desc.digest} is {size} bytes in the store but its descriptor says {desc.size}")
    with blobs.open(desc.digest) as f:
        reader = _HashingReader(f)
        tar.addfile(_tarinfo(name, tarfile.REGTYPE, 0o644, size), reader)
    if reader.digest != desc.digest:
        raise DigestMismatch(desc.digest, reader.digest, f"stored blob {desc.digest} (the store is corrupt)")


class _HashingReader:
    def __init__(self, f: BinaryIO):
        self._f = f
        self._hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._hash.update(data)
        return data

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


STDOUT = "-"


class _StreamOut:
    """A pipe as tarfile's "w" mode wants a file: writes, and tell() counted rather than asked."""

    def __init__(self, stream: BinaryIO):
        self._stream, self._offset = stream, 0

    def write(self, data) -> int:
        self._stream.write(data)
        self._offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self._offset

    def flush(self) -> None:
        self._stream.flush()


def write_file_atomically(dest: str, write: Callable[[BinaryIO], None]) -> None:
    """Call WRITE with a temp file beside DEST, renamed over DEST only when it succeeded; DEST `-`
    is the standard output."""
    if dest == STDOUT:
        import sys

        out = _StreamOut(sys.stdout.buffer)
        try:
            write(out)  # type: ignore[arg-type]
            out.flush()
        except BrokenPipeError:
            raise ExportError("the standard output was closed before the archive was written whole") from None
        return
    try:
        files.write_atomically(dest, write)
    except OSError as e:
        raise ExportError(f"cannot write {dest}: {e.strerror or e}") from e


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# --- layout directories ---------------------------------------------------------------------------


def _fill_layout(root: str, output: OutputManifest, names: Sequence[str], blobs: BlobStore,
                 existing: list[Descriptor]) -> None:
    image = output.image
    blob_dir = os.path.join(root, "blobs", "sha256")
    os.makedirs(blob_dir, exist_ok=True)
    for desc in _image_blobs(image):
        target = os.path.join(root, _blob_path(desc.digest))
        if os.path.isfile(target) and os.path.getsize(target) == desc.size:
            continue
        write_file_atomically(target, lambda out, d=desc: _copy_blob(blobs, d, out))
    for name, data in _manifest_file(output).items():
        write_file_atomically(os.path.join(root, name), lambda out, data=data: out.write(data))
    layout_file = os.path.join(root, "oci-layout")
    if not os.path.exists(layout_file):
        write_file_atomically(layout_file, lambda out: out.write(OCI_LAYOUT_FILE))
    entries = _merge_index_entries(existing, _index_entries(image, names))
    # index.json last: until it is replaced, readers see the layout as it was.
    write_file_atomically(os.path.join(root, "index.json"), lambda out: out.write(index_bytes(entries)))


def _copy_blob(blobs: BlobStore, desc: Descriptor, out: BinaryIO) -> None:
    with blobs.open(desc.digest) as f:
        reader = _HashingReader(f)
        shutil.copyfileobj(reader, out, _CHUNK)
    if reader.digest != desc.digest:
        raise DigestMismatch(desc.digest, reader.digest, f"stored blob {desc.digest} (the store is corrupt)")


def _read_index_entries(root: str) -> list[Descriptor]:
    path = os.path.join(root, "index.json")
    if not os.path.exists(path):
        return []
    try:
        with open(path, "rb") as f:
            doc = json.load(f)
        return [Descriptor.from_json(m) for m in doc.get("manifests") or ()]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ExportError(f"{path} is not a valid OCI index ({e!r}); refusing to rewrite it") from None


def _merge_index_entries(existing: list[Descriptor], new: list[Descriptor]) -> list[Descriptor]:
    """EXISTING with NEW added; an old entry with the same name as a new one (a moved tag) is dropped."""
    def name_of(d: Descriptor) -> tuple[str, str] | None:
        a = dict(d.annotations)
        if ANNOTATION_CONTAINERD_NAME in a:
            return (ANNOTATION_CONTAINERD_NAME, a[ANNOTATION_CONTAINERD_NAME])
        if ANNOTATION_REF_NAME in a:
            return (ANNOTATION_REF_NAME, a[ANNOTATION_REF_NAME])
        return None

    new_names = {name_of(d) for d in new} - {None}
    kept = [d for d in existing if d not in new and (name_of(d) is None or name_of(d) not in new_names)]
    return kept + new


# --- root filesystems -----------------------------------------------------------------------------


def _compression(blobs: BlobStore, desc: Descriptor) -> str:
    """"gzip", "zstd", ... or "" by the blob's first bytes (media types from other tools are not trusted)."""
    with blobs.open(desc.digest) as f:
        return compression.sniff(f.read(compression.MAGIC_SIZE))


@contextlib.contextmanager
def _uncompressed(blobs: BlobStore, desc: Descriptor) -> Iterator[BinaryIO]:
    """The layer's tar stream, decompressed as it is read."""
    with blobs.open(desc.digest) as f:
        try:
            with compression.decompressed(f) as stream:
                yield stream
        except compression.CorruptStream:
            raise ExportError(f"zstd could not decompress layer {desc.digest}") from None


@contextlib.contextmanager
def _decompressed_copy(blobs: BlobStore, desc: Descriptor, diff_id: str) -> Iterator[str]:
    """The layer's tar in a temp file of the store's scratch directory, checked against DIFF_ID."""
    fd, path = tempfile.mkstemp(dir=blobs.tmp_dir, prefix="export-layer-")
    try:
        with os.fdopen(fd, "wb") as out, _uncompressed(blobs, desc) as stream:
            reader = _HashingReader(stream)
            shutil.copyfileobj(reader, out, _CHUNK)
        if reader.digest != diff_id:
            raise DigestMismatch(diff_id, reader.digest, f"uncompressed layer {desc.digest}")
        yield path
    finally:
        _unlink_quietly(path)


@contextlib.contextmanager
def _staging_dir(dest: str) -> Iterator[str]:
    """A fresh directory beside DEST (same filesystem, so it can be renamed there), removed afterwards
    unless it was renamed into place."""
    parent = os.path.dirname(os.path.abspath(dest))
    try:
        stage = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(dest)}.", suffix=".tmp")
    except OSError as e:
        raise ExportError(f"cannot write to {parent}: {e.strerror or e}") from e
    try:
        yield stage
    finally:
        if os.path.lexists(stage):
            shutil.rmtree(stage, ignore_errors=True)


def _is_empty_or_missing(path: str) -> bool:
    if not os.path.lexists(path):
        return True
    return os.path.isdir(path) and not os.path.islink(path) and not os.listdir(path)


def _merge_tree(src: str, dst: str) -> None:
    """Move SRC's entries into the real directory DST. DST's entries are inspected with lstat, so a
    symlink in DST is replaced, never followed out of it."""
    for name in sorted(os.listdir(src)):
        s, d = os.path.join(src, name), os.path.join(dst, name)
        s_stat = os.lstat(s)
        try:
            d_mode = os.lstat(d).st_mode
        except FileNotFoundError:
            os.rename(s, d)
            continue
        if stat.S_ISDIR(s_stat.st_mode) and stat.S_ISDIR(d_mode):
            _merge_tree(s, d)
            os.chown(d, s_stat.st_uid, s_stat.st_gid, follow_symlinks=False)
            os.chmod(d, stat.S_IMODE(s_stat.st_mode))
            os.utime(d, ns=(s_stat.st_atime_ns, s_stat.st_mtime_ns), follow_symlinks=False)
            continue
        if stat.S_ISDIR(d_mode):
            shutil.rmtree(d)
        elif stat.S_ISDIR(s_stat.st_mode):
            os.unlink(d)  # rename() will not put a directory over a file or symlink
        os.replace(s, d)
