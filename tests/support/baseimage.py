"""The busybox base image that tests, examples and benchmarks pull, pushed by skopeo.

Deliberately built with nothing from build-image (plain tarfile, gzip, json, hashlib): it is a
test input, so a bug in the code under test cannot also hide in its own fixture.

    python -m tests.support.baseimage --registry 127.0.0.1:PORT [--repository busybox] [--tag latest]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import tarfile
import tempfile

from tests.support.rootfs import make_busybox_rootfs

_EPOCH = "1970-01-01T00:00:00Z"
_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "s390x": "s390x",
                  "ppc64le": "ppc64le", "riscv64": "riscv64"}


def host_architecture() -> str:
    machine = platform.machine()
    return _ARCHITECTURES.get(machine, machine)


def _layer_tar(rootfs: str) -> bytes:
    """A reproducible tar of ROOTFS: sorted entries, zero mtimes, numeric owners only."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(rootfs):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                path = os.path.join(dirpath, name)
                info = tar.gettarinfo(path, arcname=os.path.relpath(path, rootfs))
                info.mtime = 0
                info.uname = info.gname = ""
                if info.isfile():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    return out.getvalue()


def _write_blob(layout: str, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = os.path.join(layout, "blobs", "sha256", digest.split(":", 1)[1])
    with open(path, "wb") as f:
        f.write(data)
    return digest, len(data)


def write_busybox_oci_layout(dir: str, tag: str = "latest") -> str:
    """Write a one-layer busybox image as an OCI image layout in DIR, named TAG; returns DIR."""
    os.makedirs(os.path.join(dir, "blobs", "sha256"), exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="busybox-rootfs-") as rootfs:
        tar = _layer_tar(make_busybox_rootfs(rootfs))
    diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
    layer_digest, layer_size = _write_blob(dir, gzip.compress(tar, compresslevel=6, mtime=0))
    config = {
        "created": _EPOCH,
        "architecture": host_architecture(),
        "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": ["sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": _EPOCH, "created_by": "tests.support.baseimage: busybox-static rootfs"}],
    }
    config_digest, config_size = _write_blob(dir, json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest, "size": layer_size}],
    }
    manifest_digest, manifest_size = _write_blob(
        dir, json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest_size,
                       "platform": {"architecture": host_architecture(), "os": "linux"},
                       "annotations": {"org.opencontainers.image.ref.name": tag}}],
    }
    with open(os.path.join(dir, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(dir, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    return dir


def skopeo_copy(source: str, dest: str, *, auth: tuple[str, str] | None = None, all_images: bool = False,
                manifest_format: str | None = None) -> str:
    """`skopeo copy SOURCE DEST` to a plain-HTTP registry; returns the digest skopeo wrote.
    MANIFEST_FORMAT "v2s2" converts to Docker schema 2 media types, "oci" to OCI ones."""
    with tempfile.TemporaryDirectory(prefix="skopeo-") as tmp:
        digest_file = os.path.join(tmp, "digest")
        cmd = ["skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false",
               "--digestfile", digest_file]
        if all_images:
            cmd.append("--all")
        if manifest_format:
            cmd += ["--format", manifest_format]
        if auth:
            cmd += ["--dest-creds", f"{auth[0]}:{auth[1]}"]
        result = subprocess.run(cmd + [source, dest], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"skopeo copy {source} {dest} failed: {result.stderr.strip()}")
        with open(digest_file) as f:
            return f.read().strip()


def push_busybox_image(registry_host: str, repository: str = "busybox", tag: str = "latest",
                       auth: tuple[str, str] | None = None, docker_v2: bool = False) -> str:
    """Build the busybox image and push it to REGISTRY_HOST/REPOSITORY:TAG; returns its manifest digest.
    With DOCKER_V2 it is pushed with Docker schema 2 media types (as most public images still are),
    else with OCI ones."""
    layout = tempfile.mkdtemp(prefix="busybox-oci-")
    try:
        write_busybox_oci_layout(layout, tag)
        return skopeo_copy(f"oci:{layout}:{tag}", f"docker://{registry_host}/{repository}:{tag}", auth=auth,
                           manifest_format="v2s2" if docker_v2 else None)
    finally:
        shutil.rmtree(layout, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Push a busybox-static base image to a registry.")
    parser.add_argument("--registry", required=True, help="host:port of a plain-HTTP registry")
    parser.add_argument("--repository", default="busybox")
    parser.add_argument("--tag", default="latest")
    parser.add_argument("--user", help="user:password for a registry with Basic auth")
    parser.add_argument("--docker-v2", action="store_true", help="push with Docker schema 2 media types")
    args = parser.parse_args(argv)
    auth = tuple(args.user.split(":", 1)) if args.user else None
    digest = push_busybox_image(args.registry, args.repository, args.tag, auth=auth, docker_v2=args.docker_v2)
    print(f"{args.registry}/{args.repository}:{args.tag}@{digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
