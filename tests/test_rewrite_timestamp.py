"""rewrite-timestamp (BuildKit 0.13+): under SOURCE_DATE_EPOCH the layers a build makes have their
mtimes clamped to the epoch (build-image's default), `rewrite-timestamp=false` keeps them as made;
base image layers are never rewritten, and each mode has its own layers and cache records."""

from __future__ import annotations

import io
import json
import os
import tarfile

import pytest

from builder.cache.blobs import MemoryBlobStore
from builder.errors import BuildError
from builder.pipeline import OutputSpec
from builder.snapshot.layers import rewrite_layer_timestamps, write_layer
from tests.support.images import build_image, write_context

EPOCH = 1_700_000_000
FUTURE = EPOCH + 86_400
PAST = EPOCH - 86_400


def _tree(root) -> str:
    """Files older and newer than EPOCH, a long name, a symlink, a hard link and an xattr."""
    os.makedirs(root / "dir" / ("long-" * 30))
    (root / "dir" / "new.txt").write_text("new\n")
    (root / "dir" / "old.txt").write_text("old\n")
    (root / "dir" / ("long-" * 30) / "deep.txt").write_text("deep\n")
    os.symlink("new.txt", root / "dir" / "link")
    os.link(root / "dir" / "new.txt", root / "dir" / "hard")
    os.setxattr(root / "dir" / "old.txt", "user.note", b"kept")
    for path, when in ((root / "dir" / "old.txt", PAST), (root / "dir" / "new.txt", FUTURE)):
        os.utime(path, (when, when))
    os.utime(root / "dir" / "link", (FUTURE, FUTURE), follow_symlinks=False)
    return str(root)


def _mtimes(blobs, digest) -> dict[str, int]:
    with tarfile.open(fileobj=io.BytesIO(blobs.open(digest).read())) as tf:
        return {m.name: int(m.mtime) for m in tf}


def test_rewriting_a_layer_gives_the_layer_written_clamped(tmp_path):
    tree = _tree(tmp_path / "tree")
    blobs = MemoryBlobStore()
    raw = write_layer(tree, blobs)
    clamped = write_layer(tree, blobs, source_date_epoch=EPOCH)
    rewritten = rewrite_layer_timestamps(blobs.open(raw.digest), blobs, EPOCH, media_type=raw.media_type)
    assert raw.diff_id != clamped.diff_id
    assert (rewritten.digest, rewritten.diff_id) == (clamped.digest, clamped.diff_id)
    mtimes = _mtimes(blobs, rewritten.digest)
    assert mtimes["dir/old.txt"] == PAST          # older than the epoch: kept
    assert mtimes["dir/new.txt"] == EPOCH and mtimes["dir/link"] == EPOCH
    assert max(mtimes.values()) == EPOCH


@pytest.mark.parametrize("value, expected", [("true", True), ("false", False), ("", True), ("0", False)])
def test_output_attribute_parses(value, expected):
    assert OutputSpec.parse(f"type=oci,dest=o.tar,rewrite-timestamp={value}").rewrite_timestamp is expected
    assert OutputSpec.parse("type=docker,dest=o.tar").rewrite_timestamp is True     # build-image's default


def test_a_bad_value_is_refused_before_building():
    with pytest.raises(BuildError, match="rewrite-timestamp must be true or false, not 'maybe'"):
        OutputSpec.parse("type=image,rewrite-timestamp=maybe")


def _layer_mtimes(archive: str) -> list[dict[str, int]]:
    """Per layer of the OCI archive's one image: entry name -> mtime."""
    with tarfile.open(archive) as outer:
        def blob(digest):
            return outer.extractfile("blobs/sha256/" + digest.partition(":")[2]).read()
        index = json.loads(outer.extractfile("index.json").read())
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        layers = []
        for desc in manifest["layers"]:
            with tarfile.open(fileobj=io.BytesIO(blob(desc["digest"]))) as tf:
                layers.append({m.name: int(m.mtime) for m in tf})
        return layers


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.registry
def test_clamped_and_unclamped_builds_share_a_store_without_mixing(tmp_path, busybox_registry, store_root):
    context = write_context(tmp_path / "ctx", {
        "Dockerfile": f"FROM {busybox_registry.reference}\nCOPY old.txt new.txt /files/\nRUN touch /files/made\n",
        "old.txt": "old\n", "new.txt": "new\n"})
    os.utime(os.path.join(context, "old.txt"), (PAST, PAST))
    os.utime(os.path.join(context, "new.txt"), (FUTURE, FUTURE))

    def build(name, *outputs):
        iid = tmp_path / f"{name}.iid"
        args = ["--root", store_root, "--build-arg", f"SOURCE_DATE_EPOCH={EPOCH}", "--iidfile", str(iid)]
        for output in outputs:
            args += ["-o", output]
        build_image(*args, context)
        return iid.read_text()

    clamped = build("clamped", f"type=oci,dest={tmp_path}/clamped.tar")
    unclamped = build("unclamped", f"type=oci,dest={tmp_path}/unclamped.tar,rewrite-timestamp=false")
    again = build("again", f"type=oci,dest={tmp_path}/again.tar,rewrite-timestamp=true")
    assert clamped != unclamped and again == clamped      # the cache gave each mode its own layers

    base, copied, ran = _layer_mtimes(f"{tmp_path}/clamped.tar")
    base_raw, copied_raw, ran_raw = _layer_mtimes(f"{tmp_path}/unclamped.tar")
    assert base == base_raw                               # base layers are never rewritten
    assert copied["files/old.txt"] == PAST and copied["files/new.txt"] == EPOCH
    assert max(ran.values()) == EPOCH
    assert copied_raw["files/new.txt"] == FUTURE and ran_raw["files/made"] > EPOCH

    # One build, two outputs that disagree: each gets its mode, the first names the image.
    mixed = build("mixed", f"type=oci,dest={tmp_path}/m-raw.tar,rewrite-timestamp=false",
                  f"type=oci,dest={tmp_path}/m-clamped.tar")
    assert mixed == unclamped
    assert _layer_mtimes(f"{tmp_path}/m-raw.tar") == [base_raw, copied_raw, ran_raw]
    assert _image_id(f"{tmp_path}/m-clamped.tar") == clamped   # rewritten on export = built clamped


def _image_id(archive: str) -> str:
    with tarfile.open(archive) as outer:
        index = json.loads(outer.extractfile("index.json").read())
        manifest = outer.extractfile("blobs/sha256/" + index["manifests"][0]["digest"].partition(":")[2])
        return json.loads(manifest.read())["config"]["digest"]
