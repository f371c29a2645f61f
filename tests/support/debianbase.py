"""A real Debian base image for tests: `debootstrap --variant=minbase bookworm`, built once per machine.

Like tests/support/baseimage.py it uses nothing from build-image: it is a test input.

The cache lives outside the repository, in $BUILD_IMAGE_TEST_CACHE (default
/var/cache/build-image-tests), one entry per key:

    debian-bookworm-minbase-KEY/
        rootfs/          the tidied debootstrap tree
        layout/          an OCI image layout (tag "bookworm") whose one layer is that tree as a
                         deterministic tar.gz, so pushing never re-tars or re-compresses
        meta.json        key inputs, digests and sizes
    debian-bookworm-minbase-KEY.lock

KEY digests the suite, variant, included packages, architecture, the installed debootstrap's version
and FIXTURE_VERSION (raise it when the tidying or the image below changes), so any change builds a new
entry. Parallel pytest-xdist workers take an exclusive flock on the .lock file: the first builds, the
others wait and then reuse. A build happens in a temp directory beside the entry and is renamed into
place only when complete, so a killed build leaves only a temp directory (removed by the next build)
and is never reused.

Force a rebuild: `python -m tests.support.debianbase --rebuild` (or delete the entry).
Push: push_debian_images(HOST) puts it in a registry twice, as `debian:bookworm` with Docker v2
media types and as `debian:bookworm-oci` with OCI ones.
"""

from __future__ import annotations

import argparse
import fcntl
import glob
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass

from tests.support.baseimage import host_architecture, skopeo_copy

SUITE = "bookworm"
VARIANT = "minbase"
INCLUDE: tuple[str, ...] = ()
FIXTURE_VERSION = 1
TAG = SUITE
CACHE_ENV = "BUILD_IMAGE_TEST_CACHE"
DEFAULT_CACHE_ROOT = "/var/cache/build-image-tests"

DOCKER_V2_TAG = f"{SUITE}"
OCI_TAG = f"{SUITE}-oci"

# Every layer entry's mtime is clamped to this (bookworm's release day), so the tar depends only on the
# tree's content and not on when debootstrap ran.
_MTIME_CLAMP = 1686355200
_CREATED = "2023-06-10T00:00:00Z"
# What Debian's official images ship in /etc/apt/apt.conf.d/docker-clean: downloaded .debs are deleted
# after every install. Tests of cache mounts must remove it first, exactly as users do.
_CLEAN = "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"
_DOCKER_CLEAN = f"""\
DPkg::Post-Invoke {{ "{_CLEAN}"; }};
APT::Update::Post-Invoke {{ "{_CLEAN}"; }};
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
"""


@dataclass(frozen=True)
class DebianBase:
    entry: str            # the cache entry directory
    rootfs: str
    layout: str           # OCI image layout holding the image under TAG
    layer_digest: str     # sha256 of the gzipped layer
    layer_size: int
    diff_id: str          # sha256 of the uncompressed layer tar


def cache_root() -> str:
    return os.environ.get(CACHE_ENV) or DEFAULT_CACHE_ROOT


def debootstrap_version() -> str:
    result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "debootstrap"], capture_output=True, text=True)
    if result.returncode != 0 or not result.stdout.strip():
        raise RuntimeError("debootstrap is not installed (apt-get install debootstrap; .ci/setup does)")
    return result.stdout.strip()


def key_inputs() -> dict:
    return {"suite": SUITE, "variant": VARIANT, "include": list(INCLUDE), "architecture": host_architecture(),
            "debootstrap": debootstrap_version(), "fixture_version": FIXTURE_VERSION}


def cache_key(inputs: dict | None = None) -> str:
    canonical = json.dumps(inputs or key_inputs(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def debian_base(*, rebuild: bool = False) -> DebianBase:
    """The cached Debian base, built first if this machine has none for the current key."""
    root = cache_root()
    os.makedirs(root, exist_ok=True)
    inputs = key_inputs()
    name = f"debian-{SUITE}-{VARIANT}-{cache_key(inputs)}"
    entry = os.path.join(root, name)
    with open(entry + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held while building; waiters then find the entry complete
        if rebuild and os.path.isdir(entry):
            shutil.rmtree(entry)
        if not os.path.isfile(os.path.join(entry, "meta.json")):
            for stale in glob.glob(os.path.join(root, f".{name}.tmp-*")):
                shutil.rmtree(stale, ignore_errors=True)
            if os.path.isdir(entry):  # no meta.json: not ours, or damaged by hand
                shutil.rmtree(entry)
            tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root)
            try:
                _build_entry(tmp, inputs)
                os.rename(tmp, entry)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    return _load(entry)


def _load(entry: str) -> DebianBase:
    with open(os.path.join(entry, "meta.json")) as f:
        meta = json.load(f)
    return DebianBase(entry, os.path.join(entry, "rootfs"), os.path.join(entry, "layout"),
                      meta["layer_digest"], meta["layer_size"], meta["diff_id"])


def _build_entry(tmp: str, inputs: dict) -> None:
    rootfs = os.path.join(tmp, "rootfs")
    cmd = ["debootstrap", f"--variant={VARIANT}"]
    if INCLUDE:
        cmd.append("--include=" + ",".join(INCLUDE))
    result = subprocess.run(cmd + [SUITE, rootfs], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        log = os.path.join(rootfs, "debootstrap", "debootstrap.log")
        detail = open(log, errors="replace").read()[-3000:] if os.path.exists(log) else result.stderr[-3000:]
        raise RuntimeError(f"debootstrap failed ({result.returncode}):\n{detail}")
    _tidy(rootfs)
    meta = dict(inputs)
    meta.update(_write_layout(os.path.join(tmp, "layout"), rootfs))
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)


def _empty_dir(path: str) -> None:
    for name in os.listdir(path):
        full = os.path.join(path, name)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full)
        else:
            os.unlink(full)


def _tidy(rootfs: str) -> None:
    """Make the tree what an image's base layer is: no device nodes, host files or download leftovers
    (the runtime provides /dev, /proc, /etc/resolv.conf and /etc/hosts)."""
    for d in ("dev", "proc", "sys", "tmp", "run", "var/lib/apt/lists", "var/cache/apt/archives"):
        path = os.path.join(rootfs, d)
        os.makedirs(path, exist_ok=True)
        _empty_dir(path)
    os.makedirs(os.path.join(rootfs, "var/lib/apt/lists/partial"))
    os.makedirs(os.path.join(rootfs, "var/cache/apt/archives/partial"))
    os.makedirs(os.path.join(rootfs, "run/lock"))
    for pattern in ("var/cache/apt/*.bin", "var/cache/debconf/*-old", "var/lib/dpkg/*-old", "etc/resolv.conf",
                    "etc/hostname", "var/log/bootstrap.log"):
        for path in glob.glob(os.path.join(rootfs, pattern)):
            os.unlink(path)
    with open(os.path.join(rootfs, "etc/machine-id"), "w"):
        pass  # empty, as in Debian's images: each container gets its own
    with open(os.path.join(rootfs, "etc/apt/apt.conf.d/docker-clean"), "w") as f:
        f.write(_DOCKER_CLEAN)


class _Hashing:
    """A write-only file that digests and counts what passes through it."""

    def __init__(self, f):
        self._f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()


def _add_tree(tar: tarfile.TarFile, rootfs: str) -> None:
    """Sorted entries, numeric owners, clamped mtimes: the same tree always gives the same bytes."""
    for dirpath, dirnames, filenames in os.walk(rootfs):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            info = tar.gettarinfo(path, arcname=os.path.relpath(path, rootfs))
            if info is None:  # a socket: nothing an image can carry
                continue
            info.mtime = min(int(info.mtime), _MTIME_CLAMP)
            info.uname = info.gname = ""
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)


class _Digest:
    """A sink that only digests: for checking a tree's tar without writing it."""

    def __init__(self):
        self.sha = hashlib.sha256()

    def write(self, data) -> int:
        self.sha.update(data)
        return len(data)


def layer_diff_id(rootfs: str) -> str:
    """The diff_id the layer of ROOTFS has: the digest of its deterministic uncompressed tar."""
    sink = _Digest()
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        _add_tree(tar, rootfs)
    return "sha256:" + sink.sha.hexdigest()


def _write_blob(layout: str, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest, len(data)


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _write_layout(layout: str, rootfs: str) -> dict:
    blobs = os.path.join(layout, "blobs", "sha256")
    os.makedirs(blobs)
    partial = os.path.join(blobs, "layer.partial")
    with open(partial, "wb") as raw:
        compressed = _Hashing(raw)
        with gzip.GzipFile(fileobj=compressed, mode="wb", compresslevel=6, mtime=0) as gz:
            uncompressed = _Hashing(gz)
            with tarfile.open(fileobj=uncompressed, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                _add_tree(tar, rootfs)
    layer_digest, layer_size = "sha256:" + compressed.sha.hexdigest(), compressed.size
    diff_id = "sha256:" + uncompressed.sha.hexdigest()
    os.rename(partial, os.path.join(blobs, layer_digest.split(":", 1)[1]))
    config = {
        "created": _CREATED,
        "architecture": host_architecture(),
        "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": ["bash"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": _CREATED,
                     "created_by": f"tests.support.debianbase: debootstrap --variant={VARIANT} {SUITE}"}],
    }
    config_digest, config_size = _write_blob(layout, _canonical(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest,
                    "size": layer_size}],
    }
    manifest_digest, manifest_size = _write_blob(layout, _canonical(manifest))
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
                       "size": manifest_size, "platform": {"architecture": host_architecture(), "os": "linux"},
                       "annotations": {"org.opencontainers.image.ref.name": TAG}}],
    }
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    return {"layer_digest": layer_digest, "layer_size": layer_size, "diff_id": diff_id}


def push_debian_images(registry_host: str, repository: str = "debian") -> dict[str, str]:
    """Push the cached base to REGISTRY_HOST twice: REPOSITORY:bookworm with Docker v2 media types and
    REPOSITORY:bookworm-oci with OCI ones. Returns {tag: manifest digest}."""
    base = debian_base()
    source = f"oci:{base.layout}:{TAG}"
    return {tag: skopeo_copy(source, f"docker://{registry_host}/{repository}:{tag}", manifest_format=fmt)
            for tag, fmt in ((DOCKER_V2_TAG, "v2s2"), (OCI_TAG, "oci"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build (once) the cached Debian base image for tests.")
    parser.add_argument("--rebuild", action="store_true", help="throw the cached entry away and build anew")
    parser.add_argument("--registry", help="also push it to this plain-HTTP registry (host:port)")
    args = parser.parse_args(argv)
    base = debian_base(rebuild=args.rebuild)
    print(f"{base.entry} layer {base.layer_digest} ({base.layer_size} bytes)")
    if args.registry:
        for tag, digest in push_debian_images(args.registry).items():
            print(f"{args.registry}/debian:{tag}@{digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
