"""`prune`, `df` and `fsck` over real stores: what goes, what stays, and what is reported."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from builder.store import Store
from tests.support.images import build_image, write_context
from tests.test_cli_images import cli, import_image


def blob_files(root: str) -> set[str]:
    return set(os.listdir(os.path.join(root, "blobs", "sha256")))


def image_blobs(root: str, name: str) -> set[str]:
    [doc] = json.loads(cli(root, "inspect", name).stdout)
    store = Store(root)
    manifest = json.loads(store.blobs.get_bytes(doc["Manifest"]["Digest"]))
    digests = [doc["Manifest"]["Digest"], manifest["config"]["digest"]] + [l["digest"] for l in manifest["layers"]]
    return {d.partition(":")[2] for d in digests}


def test_prune_removes_dangling_images_and_orphan_blobs(store_root, tmp_path):
    old = import_image(store_root, tmp_path, "app:1", {"old": b"old" * 1000})
    old_blobs = image_blobs(store_root, old[7:19])
    import_image(store_root, tmp_path, "app:1", {"new": b"new"})   # app:1 moves: the old image dangles
    kept = image_blobs(store_root, "app:1")
    orphan = Store(store_root).blobs.put_bytes(b"nobody refers to me")
    out = cli(store_root, "prune", "-f").stdout
    reclaimed = re.fullmatch(r"Deleted Images:\ndeleted: (sha256:\w+)\n\nTotal reclaimed space: (\S+)\n", out)
    assert reclaimed and reclaimed.group(1) == old and reclaimed.group(2).endswith("B")
    assert blob_files(store_root) == kept and orphan[7:] not in blob_files(store_root)
    assert not old_blobs & blob_files(store_root)
    assert cli(store_root, "prune", "-f").stdout == "Total reclaimed space: 0B\n"
    assert cli(store_root, "fsck").stdout == "no problems found\n"


def test_prune_all_honours_until_and_asks_first(store_root, tmp_path):
    image_id = import_image(store_root, tmp_path, "app:1", {"f": b"data"})
    proc = cli(store_root, "prune", "-a", stdin=b"n\n")
    assert b"WARNING! This will remove:" in proc.stdout and proc.stdout.endswith(b"Total reclaimed space: 0B\n")
    assert cli(store_root, "prune", "-a", "-f", "--filter", "until=1h").stdout == "Total reclaimed space: 0B\n"
    out = cli(store_root, "prune", "-a", "-f").stdout
    assert out.startswith(f"Deleted Images:\nuntagged: app:1\ndeleted: {image_id}\n")
    assert blob_files(store_root) == set()
    proc = cli(store_root, "prune", "-f", "--filter", "until=yesterday", check=False)
    assert proc.returncode == 1 and "invalid filter 'until=yesterday'" in proc.stderr


def test_prune_waits_for_a_running_build(store_root, tmp_path):
    """A build holds the root shared for its whole run; prune takes it exclusively."""
    import_image(store_root, tmp_path, "app:1", {"f": b"x"})
    holder = Store(store_root)
    holder.acquire(shared=True)
    proc = subprocess.Popen([sys.executable, "-m", "builder.cli", "prune", "-a", "-f", "--root", store_root],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        assert proc.poll() is None  # blocked on the lock
        assert "docker.io/library/app:1" in dict(Store(store_root).images.list())
    finally:
        holder.release()
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "untagged: app:1" in out


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.registry
def test_prune_cache_and_df(store_root, busybox_registry, tmp_path):
    context = write_context(tmp_path / "ctx", {
        "Dockerfile": f"FROM {busybox_registry.reference}\nRUN echo one > /one\nRUN echo two > /two\n"})
    build_image("--root", store_root, "-t", "app", "-q", context)
    store = Store(store_root)
    assert len(store.records.keys()) == 2 and store.snapshot_keys()

    df = cli(store_root, "df").stdout.splitlines()
    assert df[0].split() == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    kinds = {re.split(r" {3,}", line)[0]: re.split(r" {3,}", line)[1:] for line in df[1:]}
    assert kinds["Images"][:2] == ["2", "2"]          # app, and the base image the build pulled
    assert kinds["Build Cache"][:2] == ["2", "2"]     # both cached layers are in app
    assert set(kinds) == {"Images", "Build Cache", "Snapshots"}

    out = cli(store_root, "prune", "-f").stdout      # nothing dangling: images and cache stay
    assert "deleted: sha256:" not in out and len(store.records.keys()) == 2
    rebuilt = build_image("--root", store_root, "-t", "app", "--progress", "plain", context)
    assert rebuilt.stderr.count("CACHED") >= 2

    cli(store_root, "rmi", "app")
    assert len(blob_files(store_root)) >= 2           # the cache records still hold their layers
    out = cli(store_root, "prune", "-f", "-a", "--cache").stdout
    assert out.count("\n") >= 5 and "Deleted build cache objects:" in out
    assert blob_files(store_root) == set() and store.records.keys() == [] and store.snapshot_keys() == []
    assert os.listdir(os.path.join(store_root, "cache", "plans")) == []  # unchanged-rebuild records too
    assert cli(store_root, "fsck").returncode == 0


def test_fsck_finds_and_repairs(store_root, tmp_path):
    from builder.cache.records import CacheRecord

    import_image(store_root, tmp_path, "good:1", {"g": b"good"})
    import_image(store_root, tmp_path, "bad:1", {"b": b"bad" * 100})
    store = Store(store_root)
    [bad] = json.loads(cli(store_root, "inspect", "bad:1").stdout)
    layer = json.loads(store.blobs.get_bytes(bad["Manifest"]["Digest"]))["layers"][0]["digest"]
    with open(store.blobs.path(layer), "r+b") as f:   # flip one byte of the layer
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0xFF]))
    missing = "sha256:" + "ab" * 32
    store.records.put(CacheRecord("sha256:" + "cd" * 32, missing, missing, 10, "x", "2024-01-01T00:00:00Z"))
    os.mkdir(os.path.join(store_root, "snapshots", "not-a-snapshot"))

    proc = cli(store_root, "fsck", check=False)
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        f"blob {layer}: content does not match its digest",
        f"image bad:1: layer {layer} is corrupt",
        f"cache record cdcdcdcdcdcd: layer {missing} is missing",
        "snapshot entry not-a-snapshot: not a snapshot directory",
    ]
    assert proc.stderr == "4 problems found, 0 repaired\n"

    out = cli(store_root, "fsck", "--repair").stdout
    assert out.count("(removed)") == 4 and out.endswith("4 problems found and repaired\n")
    assert cli(store_root, "fsck").stdout == "no problems found\n"
    assert cli(store_root, "images", "--format", "{{.Repository}}:{{.Tag}}").stdout == "good:1\n"
    assert cli(store_root, "save", "-o", str(tmp_path / "good.tar"), "good:1").returncode == 0
