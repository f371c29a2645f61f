"""What the conformance suite compares between BuildKit's image and ours: a summary of one image.

    base = flatten(read_image(BUSYBOX_LAYOUT))
    summary = summarize(read_image("image.tar"), base)

`read_image` takes an OCI image layout (a directory or an `oci-archive` tar) or a `docker save` tar (the
legacy `manifest.json` format Docker 20.10 writes). `flatten` applies the layers in order, whiteouts
included, into one tree. `summarize` gives:

    files     every path that differs from the base image's tree: type, mode, uid/gid, size, sha256 of
              the contents, symlink target, and the other paths of a hard-link group
    deleted   base paths that are gone (only the topmost of a deleted subtree)
    config    the runtime config fields a Dockerfile sets, empty ones dropped (Go's omitempty makes a
              missing field and an empty one the same thing), plus the top-level author
    history   (created_by, empty_layer) per entry

Nothing time-dependent is kept (mtimes, `created`), and the test registry's host:port becomes `REGISTRY`,
so two builds against registries on different ports summarise the same.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import posixpath
import stat
import subprocess
import tarfile
from dataclasses import dataclass

CONFIG_FIELDS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "ExposedPorts", "Volumes", "Labels",
                 "StopSignal", "Healthcheck", "Shell", "OnBuild")
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class Image:
    config: dict
    layers: tuple[bytes, ...]        # uncompressed layer tars, bottom first


@dataclass(frozen=True)
class Entry:
    type: str                        # file, dir, symlink, char, block, fifo
    mode: int                        # permission bits with setuid/setgid/sticky
    uid: int
    gid: int
    size: int = 0
    sha256: str = ""
    target: str = ""                 # symlink target, or "major:minor" of a device


# --- reading images ---------------------------------------------------------------------------------


def read_image(path: str) -> Image:
    """The config and uncompressed layers of the one image in PATH (layout dir, OCI or docker tar)."""
    if os.path.isdir(path):
        def read(name: str) -> bytes:
            with open(os.path.join(path, name), "rb") as f:
                return f.read()
        return _read_layout(read)
    with tarfile.open(path) as tar:
        names = set(tar.getnames())

        def read(name: str) -> bytes:
            member = tar.extractfile(_normalize(name) if _normalize(name) in names else name)
            if member is None:
                raise ValueError(f"{path}: {name} is not a file")
            return member.read()
        if "manifest.json" in names and "index.json" not in names:
            return _read_docker_save(read)
        return _read_layout(read)


def _read_layout(read) -> Image:
    index = json.loads(read("index.json"))
    manifests = index["manifests"]
    if len(manifests) != 1:
        raise ValueError(f"expected one image in the layout, found {len(manifests)}")
    manifest = json.loads(read(_blob_path(manifests[0]["digest"])))
    config = json.loads(read(_blob_path(manifest["config"]["digest"])))
    layers = tuple(_decompress(read(_blob_path(layer["digest"]))) for layer in manifest["layers"])
    return Image(config, layers)


def _read_docker_save(read) -> Image:
    manifest = json.loads(read("manifest.json"))
    if len(manifest) != 1:
        raise ValueError(f"expected one image in the docker archive, found {len(manifest)}")
    config = json.loads(read(manifest[0]["Config"]))
    return Image(config, tuple(_decompress(read(name)) for name in manifest[0]["Layers"]))


def _blob_path(digest: str) -> str:
    algorithm, _, hex_digest = digest.partition(":")
    return f"blobs/{algorithm}/{hex_digest}"


def _decompress(blob: bytes) -> bytes:
    """A layer blob as a plain tar, whatever compression it was shipped with."""
    if blob.startswith(b"\x1f\x8b"):
        return gzip.decompress(blob)
    if blob.startswith(_ZSTD_MAGIC):
        return subprocess.run(["zstd", "-dc"], input=blob, capture_output=True, check=True).stdout
    return blob


# --- flattening ------------------------------------------------------------------------------------


def flatten(image: Image) -> dict[str, Entry]:
    """The image's root filesystem as path -> Entry ("/" excluded), hard links resolved by inode."""
    tree, _ = _flatten_with_inodes(image)
    return tree


def _flatten_with_inodes(image: Image) -> tuple[dict[str, Entry], dict[str, int]]:
    tree: dict[str, Entry] = {}
    inodes: dict[str, int] = {}      # regular file path -> an inode number shared by its hard links
    next_inode = iter(range(1, 1 << 62))
    for layer in image.layers:
        added: set[str] = set()
        with tarfile.open(fileobj=io.BytesIO(layer), mode="r:") as tar:
            for member in tar:
                path = _normalize(member.name)
                if not path:
                    continue
                parent, name = posixpath.split(path)
                if name == _OPAQUE:
                    _remove_below(tree, inodes, parent, keep=added)
                    continue
                if name.startswith(_WHITEOUT):
                    _remove(tree, inodes, posixpath.join(parent, name[len(_WHITEOUT):]))
                    continue
                if member.islnk():
                    source = _normalize(member.linkname)
                    if source not in tree:
                        raise ValueError(f"hard link {path} -> {source}: no such file in the layers so far")
                    entry, inode = tree[source], inodes[source]
                else:
                    entry, inode = _entry(tar, member), next(next_inode)
                previous = tree.get(path)
                if previous is not None and (previous.type != "dir" or entry.type != "dir"):
                    _remove(tree, inodes, path)
                tree[path] = entry
                if entry.type == "file":
                    inodes[path] = inode
                added.add(path)
    return tree, inodes


def _entry(tar: tarfile.TarFile, member: tarfile.TarInfo) -> Entry:
    mode, uid, gid = stat.S_IMODE(member.mode), member.uid, member.gid
    if member.isdir():
        return Entry("dir", mode, uid, gid)
    if member.issym():
        return Entry("symlink", mode, uid, gid, target=member.linkname)
    if member.isreg():
        data = tar.extractfile(member).read()
        return Entry("file", mode, uid, gid, len(data), hashlib.sha256(data).hexdigest())
    kinds = {tarfile.CHRTYPE: "char", tarfile.BLKTYPE: "block", tarfile.FIFOTYPE: "fifo"}
    if member.type not in kinds:
        raise ValueError(f"{member.name}: unsupported tar entry type {member.type!r}")
    device = f"{member.devmajor}:{member.devminor}" if member.type != tarfile.FIFOTYPE else ""
    return Entry(kinds[member.type], mode, uid, gid, target=device)


def _normalize(name: str) -> str:
    return posixpath.normpath("/" + name).lstrip("/")


def _remove(tree: dict[str, Entry], inodes: dict[str, int], path: str) -> None:
    tree.pop(path, None)
    inodes.pop(path, None)
    _remove_below(tree, inodes, path)


def _remove_below(tree: dict[str, Entry], inodes: dict[str, int], directory: str, keep: set[str] = frozenset()) -> None:
    prefix = directory + "/" if directory else ""
    for path in [p for p in tree if p.startswith(prefix) and p not in keep]:
        del tree[path]
        inodes.pop(path, None)


# --- the summary -----------------------------------------------------------------------------------


def summarize(image: Image, base: dict[str, Entry], registry_host: str) -> dict:
    """The comparable summary of IMAGE, its files relative to the flattened BASE tree; REGISTRY_HOST
    (host:port of the registry the base came from) is written as REGISTRY."""
    tree, inodes = _flatten_with_inodes(image)
    links: dict[int, list[str]] = {}
    for path, inode in inodes.items():
        links.setdefault(inode, []).append(path)
    files = {}
    for path in sorted(tree):
        entry = tree[path]
        group = links.get(inodes.get(path, 0), [])
        if base.get(path) == entry and len(group) < 2:
            continue
        files["/" + path] = _describe(entry, sorted("/" + p for p in group if p != path))
    deleted = sorted("/" + path for path in base
                     if path not in tree and (posixpath.dirname(path) == "" or posixpath.dirname(path) in tree))
    return {"files": files, "deleted": deleted, "config": _config(image.config, registry_host),
            "history": _history(image.config, registry_host)}


def _describe(entry: Entry, hard_links: list[str]) -> dict:
    out: dict = {"type": entry.type, "mode": f"{entry.mode:04o}", "uid": entry.uid, "gid": entry.gid}
    if entry.type == "file":
        out.update(size=entry.size, sha256=entry.sha256)
    if entry.target:
        out["target"] = entry.target
    if hard_links:
        out["hard_links"] = hard_links
    return out


def _config(image_config: dict, registry_host: str) -> dict:
    runtime = image_config.get("config") or {}
    out = {key: _without_host(runtime[key], registry_host) for key in CONFIG_FIELDS if _present(runtime.get(key))}
    if image_config.get("author"):
        out["author"] = image_config["author"]
    return out


def _history(image_config: dict, registry_host: str) -> list[list]:
    return [[_without_host(entry.get("created_by", ""), registry_host), bool(entry.get("empty_layer", False))]
            for entry in image_config.get("history") or []]


def _present(value) -> bool:
    return value is not None and value != [] and value != {} and value != ""


def _without_host(value, host: str):
    """VALUE with HOST replaced by REGISTRY in every string, recursively."""
    if isinstance(value, str):
        return value.replace(host, "REGISTRY")
    if isinstance(value, list):
        return [_without_host(v, host) for v in value]
    if isinstance(value, dict):
        return {_without_host(k, host): _without_host(v, host) for k, v in value.items()}
    return value
