"""`diff A B`: what differs between two images, config first, then file by file.

An image is named as skopeo names it, or as the store does:

    NAME | ID                a local image (`app:1`, an ID prefix)
    oci-archive:FILE         an OCI image-layout tar
    docker-archive:FILE      a `docker save` tar
    oci:DIR[:TAG]            an OCI image-layout directory (TAG: its ref.name annotation)
    docker://REF             a registry

Everything but a local image is loaded into a throw-away store first, through the same loaders
and registry client `load` and `pull` use, so each kind is checked as strictly as there.

Layers are compared index by index (or, with `flatten`, the file systems they stack up to). A
file's fields are those of its tar entry: type, content digest, size, mode, uid/gid, mtime,
xattrs, link target, and its place in the tar among the entries both layers have. Whiteouts
(`.wh.x`, `.wh..wh..opq`) are entries like any other in a layer and act in a flattened tree.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import posixpath
import re
import tarfile
import tempfile
import zlib
from typing import Any, Iterator, Sequence

from builder.errors import StoreError
from builder.image.manifest import StoredImage
from builder.plumbing.records import dataclass
from builder.store import Store

from .inventory import find_image
from .layertar import CorruptLayer, decompressed

_CHUNK = 1 << 20
FIELDS = ("type", "digest", "size", "mode", "uid", "gid", "mtime", "xattrs", "link", "order")


class InvalidImageSource(StoreError):
    """A `diff` source that names no readable image."""


# --- what is compared -------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One tar entry of a layer, as the diff sees it."""

    path: str
    type: str                      # file dir symlink hardlink char block fifo whiteout opaque
    digest: str = ""               # sha256 of a regular file's content
    size: int = 0
    mode: int = 0
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    xattrs: tuple[tuple[str, str], ...] = ()
    link: str = ""
    order: int = 0                 # position in its layer's tar

    def value(self, name: str):
        value = getattr(self, name)
        if name == "mode":
            return f"{value:04o}"
        if name == "xattrs":
            return dict(value)
        return value


@dataclass(frozen=True)
class FieldChange:
    field: str
    a: Any
    b: Any

    def to_json(self) -> dict:
        return {"field": self.field, "a": self.a, "b": self.b}


@dataclass(frozen=True)
class FileChange:
    path: str
    change: str                                 # added | removed | changed
    fields: tuple[FieldChange, ...] = ()        # for changed

    def to_json(self) -> dict:
        out: dict = {"path": self.path, "change": self.change}
        if self.fields:
            out["fields"] = [f.to_json() for f in self.fields]
        return out


@dataclass(frozen=True)
class LayerDiff:
    index: int | None                           # None: the flattened file systems
    a: str | None                               # the layer digests (None: no such layer)
    b: str | None
    step_a: str = ""                            # the history entry that made it
    step_b: str = ""
    files: tuple[FileChange, ...] = ()

    @property
    def same(self) -> bool:
        return self.a == self.b and not self.files

    def to_json(self) -> dict:
        return {"index": self.index, "a": self.a, "b": self.b, "step_a": self.step_a, "step_b": self.step_b,
                "files": [f.to_json() for f in self.files]}


@dataclass(frozen=True)
class ImageSide:
    source: str
    image_id: str
    manifest_digest: str


@dataclass(frozen=True)
class ImageDiff:
    a: ImageSide
    b: ImageSide
    config: tuple[FieldChange, ...]
    layers: tuple[LayerDiff, ...]               # only the layers that differ
    flattened: bool = False

    @property
    def identical(self) -> bool:
        return self.a.image_id == self.b.image_id

    def to_json(self) -> dict:
        side = lambda s: {"source": s.source, "id": s.image_id, "manifest": s.manifest_digest}
        return {"a": side(self.a), "b": side(self.b), "identical": self.identical, "flattened": self.flattened,
                "config": [c.to_json() for c in self.config], "layers": [l.to_json() for l in self.layers]}


# --- opening images ---------------------------------------------------------------------------


@contextlib.contextmanager
def opened_image(source: str, store: Store, *, insecure_registries: Sequence[str] = ()
                 ) -> Iterator[tuple[Store, StoredImage]]:
    """SOURCE's image and the store its blobs are in: STORE (locked by the caller) for a local
    image, else a scratch store that is removed on leaving."""
    kind, sep, _ = source.partition(":")
    if sep and kind in ("oci-archive", "docker-archive", "oci") or source.startswith("docker://"):
        with tempfile.TemporaryDirectory(prefix="build-image-diff-") as scratch:
            temp = Store(scratch)   # private to this call: the loaders lock it themselves
            yield temp, _load(source, temp, insecure_registries)
        return
    yield store, find_image(store, source).image


def _load(source: str, store: Store, insecure_registries: Sequence[str]) -> StoredImage:
    from builder.image.manifest import read_image

    from .distribution import pull
    from .image_archive import load_archive

    if source.startswith("docker://"):
        result = pull(store, source[len("docker://"):], insecure_registries=insecure_registries)
        return read_image(store.blobs, result.manifest_digest)
    kind, _, path = source.partition(":")
    if kind == "oci":
        path, tag = _layout_and_tag(path)
        loaded = load_archive(store, _layout_tar(path, tag, source), source)
    else:
        if not os.path.isfile(path):
            raise InvalidImageSource(f"{source}: no such file")
        with open(path, "rb") as f:
            loaded = load_archive(store, f, source)
    distinct = {image.manifest_digest: image for image in loaded}
    if len(distinct) != 1:
        raise InvalidImageSource(f"{source} holds {len(distinct)} images; diff compares one")
    return read_image(store.blobs, next(iter(distinct)))


def _layout_and_tag(text: str) -> tuple[str, str]:
    """`DIR` or `DIR:TAG` (a DIR that exists as written wins, so paths may hold colons)."""
    if os.path.isdir(text):
        return text, ""
    path, sep, tag = text.rpartition(":")
    if sep and os.path.isdir(path) and "/" not in tag:
        return path, tag
    raise InvalidImageSource(f"oci:{text}: no such image layout directory")


def _layout_tar(path: str, tag: str, source: str) -> io.BytesIO:
    """The layout directory as the tar `load` reads; with TAG, an index of that entry only."""
    try:
        with open(os.path.join(path, "index.json"), "rb") as f:
            index = json.load(f)
    except (OSError, ValueError):
        raise InvalidImageSource(f"{source}: no readable index.json") from None
    if tag:
        entries = [m for m in index.get("manifests") or ()
                   if _ref_name(m) in (tag,) or _ref_name(m).endswith(":" + tag)]
        if not entries:
            raise InvalidImageSource(f"{source}: no image tagged {tag!r} in the layout")
        index = {**index, "manifests": entries[:1]}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tf:
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                rel = os.path.relpath(full, path)
                if rel == "index.json":
                    continue
                tf.add(full, rel, recursive=False)
        data = json.dumps(index).encode()
        info = tarfile.TarInfo("index.json")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    out.seek(0)
    return out


def _ref_name(entry: dict) -> str:
    annotations = entry.get("annotations") or {}
    return annotations.get("org.opencontainers.image.ref.name") or annotations.get("io.containerd.image.name") or ""


# --- reading layers ---------------------------------------------------------------------------

_TYPES = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink",
          tarfile.LNKTYPE: "hardlink", tarfile.CHRTYPE: "char", tarfile.BLKTYPE: "block", tarfile.FIFOTYPE: "fifo",
          tarfile.CONTTYPE: "file"}


def entry_path(name: str) -> str:
    """A tar entry's name as an absolute path: `./etc/` and `etc` are `/etc`, `.` is `/`."""
    clean = posixpath.normpath("/" + name)
    return "/" + clean.lstrip("/")


def layer_entries(store: Store, digest: str) -> dict[str, Entry]:
    """The entries of layer DIGEST by cleaned path (`/etc/passwd`)."""
    entries: dict[str, Entry] = {}
    what = f"layer {digest}"
    try:
        with store.blobs.open(digest) as blob, decompressed(blob, what) as stream, \
                tarfile.open(fileobj=stream, mode="r|", errors="surrogateescape") as tf:
            for order, info in enumerate(tf):
                path = entry_path(info.name)
                base = posixpath.basename(path)
                kind = _TYPES.get(info.type, "other")
                if base == ".wh..wh..opq":
                    kind = "opaque"
                elif base.startswith(".wh."):
                    kind = "whiteout"
                digest_text, size = "", info.size if kind == "file" else 0
                if kind == "file":
                    hasher = hashlib.sha256()
                    data = tf.extractfile(info)
                    while chunk := data.read(_CHUNK):
                        hasher.update(chunk)
                    digest_text = "sha256:" + hasher.hexdigest()
                xattrs = tuple(sorted((k[len("SCHILY.xattr."):], v) for k, v in info.pax_headers.items()
                                      if k.startswith("SCHILY.xattr.")))
                entries[path] = Entry(path, kind, digest_text, size, info.mode & 0o7777, info.uid, info.gid,
                                      int(info.mtime), xattrs, info.linkname, order)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise CorruptLayer(f"{what} is not a readable layer: {e}") from None
    return entries


def flattened(store: Store, image: StoredImage) -> dict[str, Entry]:
    """The file system IMAGE's layers stack up to (whiteouts applied), by path."""
    tree: dict[str, Entry] = {}
    for desc in image.layers:
        layer = layer_entries(store, desc.digest)
        for path, entry in layer.items():
            parent = posixpath.dirname(path)
            if entry.type == "opaque":
                _remove_below(tree, parent, keep=layer)
            elif entry.type == "whiteout":  # hides the lower layers' entry, never this layer's own
                victim = posixpath.join(parent, posixpath.basename(path)[len(".wh."):])
                if victim not in layer:
                    tree.pop(victim, None)
                _remove_below(tree, victim, keep=layer)
        for path, entry in layer.items():
            if entry.type not in ("opaque", "whiteout"):
                if entry.type != "dir":
                    _remove_below(tree, path, keep=layer)
                tree[path] = entry
    return tree


def _remove_below(tree: dict[str, Entry], directory: str, keep: dict[str, Entry]) -> None:
    prefix = directory.rstrip("/") + "/"
    for path in [p for p in tree if p.startswith(prefix) and p not in keep]:
        del tree[path]


# --- comparing --------------------------------------------------------------------------------


def compare_entries(a: dict[str, Entry], b: dict[str, Entry], *, with_order: bool = True) -> tuple[FileChange, ...]:
    """Files added, removed and changed from A to B, in path order. Order compares the place of
    each entry among the entries both sides have, so one added file does not move every other."""
    common = [p for p in a if p in b]
    rank_a = {p: i for i, p in enumerate(sorted(common, key=lambda p: a[p].order))}
    rank_b = {p: i for i, p in enumerate(sorted(common, key=lambda p: b[p].order))}
    changes = []
    for path in sorted(set(a) | set(b)):
        if path not in b:
            changes.append(FileChange(path, "removed"))
        elif path not in a:
            changes.append(FileChange(path, "added"))
        else:
            fields = [FieldChange(name, a[path].value(name), b[path].value(name))
                      for name in FIELDS if name != "order" and a[path].value(name) != b[path].value(name)]
            if with_order and rank_a[path] != rank_b[path]:
                fields.append(FieldChange("order", a[path].order, b[path].order))
            if fields:
                changes.append(FileChange(path, "changed", tuple(fields)))
    return tuple(changes)


def compare_configs(a: dict, b: dict) -> tuple[FieldChange, ...]:
    """Every leaf of the two config documents that differs, named by its path
    (`config.Env[1]`, `history[3].created`, `rootfs.diff_ids[2]`)."""
    flat_a, flat_b = dict(_leaves(a)), dict(_leaves(b))
    missing = object()
    return tuple(FieldChange(path, flat_a.get(path), flat_b.get(path))
                 for path in sorted(set(flat_a) | set(flat_b), key=_path_key)
                 if flat_a.get(path, missing) != flat_b.get(path, missing))


def _leaves(value, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from _leaves(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list) and value:
        for index, item in enumerate(value):
            yield from _leaves(item, f"{path}[{index}]")
    else:
        yield path, value


def _path_key(path: str):
    """Sort `history[10]` after `history[9]`."""
    return [int(p) if p.isdigit() else p for p in re.split(r"\[(\d+)\]", path)]


def layer_steps(image: StoredImage) -> list[str]:
    """The `created_by` of the history entry that made each layer. A history that lists fewer
    layers (some base images have none) is matched from the top: built layers come last."""
    steps = [h.created_by for h in image.config.history if not h.empty_layer]
    count = len(image.layers)
    return steps[:count] if len(steps) >= count else [""] * (count - len(steps)) + steps


def diff_images(store_a: Store, image_a: StoredImage, store_b: Store, image_b: StoredImage, *,
                source_a: str = "A", source_b: str = "B", flatten: bool = False) -> ImageDiff:
    """The config diff and the differing layers (or flattened trees) of two opened images."""
    config = compare_configs(_config_document(store_a, image_a), _config_document(store_b, image_b))
    layers: list[LayerDiff] = []
    if flatten:
        if [l.digest for l in image_a.layers] != [l.digest for l in image_b.layers]:
            files = compare_entries(flattened(store_a, image_a), flattened(store_b, image_b), with_order=False)
            layers.append(LayerDiff(None, image_a.manifest.digest, image_b.manifest.digest, files=files))
    else:
        steps_a, steps_b = layer_steps(image_a), layer_steps(image_b)
        for index in range(max(len(image_a.layers), len(image_b.layers))):
            a = image_a.layers[index] if index < len(image_a.layers) else None
            b = image_b.layers[index] if index < len(image_b.layers) else None
            if a is not None and b is not None and a.digest == b.digest:
                continue
            entries_a = layer_entries(store_a, a.digest) if a is not None else {}
            entries_b = layer_entries(store_b, b.digest) if b is not None else {}
            layers.append(LayerDiff(index, a.digest if a else None, b.digest if b else None,
                                    steps_a[index] if a else "", steps_b[index] if b else "",
                                    compare_entries(entries_a, entries_b)))
    return ImageDiff(ImageSide(source_a, image_a.image_id, image_a.manifest.digest),
                     ImageSide(source_b, image_b.image_id, image_b.manifest.digest),
                     config, tuple(layers), flatten)


def _config_document(store: Store, image: StoredImage) -> dict:
    with store.blobs.open(image.config_descriptor.digest) as f:
        return json.loads(f.read())


def diff(store: Store, source_a: str, source_b: str, *, flatten: bool = False,
         insecure_registries: Sequence[str] = ()) -> ImageDiff:
    """`build-image diff A B`: open both sources (see the module docstring) and compare them."""
    with store, opened_image(source_a, store, insecure_registries=insecure_registries) as (store_a, image_a), \
            opened_image(source_b, store, insecure_registries=insecure_registries) as (store_b, image_b):
        return diff_images(store_a, image_a, store_b, image_b, source_a=source_a, source_b=source_b,
                           flatten=flatten)
