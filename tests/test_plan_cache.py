"""An unchanged rebuild reuses the recorded image; any changed input makes a real build."""

from __future__ import annotations

import os

import pytest

from tests.support.images import build_image, write_context

pytestmark = [pytest.mark.root, pytest.mark.overlay, pytest.mark.registry]


def build(context, root, *extra):
    return build_image("--root", root, "--progress", "plain", *extra, context)


def push_base(host: str, root: str, tmp_path, content: str) -> None:
    """Pushes an image with /base.txt = CONTENT to HOST/moving:latest."""
    context = write_context(tmp_path / f"base-{content}", {
        "Dockerfile": f"FROM {host}/busybox:latest\nRUN echo {content} > /base.txt\n"})
    build(context, root, "-o", f"type=image,name={host}/moving:latest,push=true")


def test_moved_base_tag_is_noticed_with_pull(tmp_path, store_root, busybox_registry):
    host = busybox_registry.host
    push_base(host, str(tmp_path / "pusher"), tmp_path, "one")
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"FROM {host}/moving:latest\nRUN cp /base.txt /copy\n"})
    out = str(tmp_path / "out")
    build(context, store_root, "-o", f"type=local,dest={out}")
    assert open(os.path.join(out, "copy")).read() == "one\n"

    push_base(host, str(tmp_path / "pusher"), tmp_path, "two")
    out2 = str(tmp_path / "out2")
    build(context, store_root, "-o", f"type=local,dest={out2}")   # as docker: the local copy
    assert open(os.path.join(out2, "copy")).read() == "one\n"
    out3 = str(tmp_path / "out3")
    build(context, store_root, "--pull", "-o", f"type=local,dest={out3}")
    assert open(os.path.join(out3, "copy")).read() == "two\n"


def test_edited_context_file_and_build_args_are_noticed(tmp_path, store_root, busybox_registry):
    context = write_context(tmp_path / "ctx", {
        "Dockerfile": f"FROM {busybox_registry.reference}\nARG N=0\nCOPY data.txt /\nRUN echo $N >> /data.txt\n",
        "data.txt": "first\n"})
    iid = str(tmp_path / "iid")
    build(context, store_root, "--iidfile", iid)
    first = open(iid).read()
    build(context, store_root, "--iidfile", iid)
    assert open(iid).read() == first                         # unchanged: the same image

    with open(os.path.join(context, "data.txt"), "w") as f:
        f.write("second\n")
    out = str(tmp_path / "out")
    build(context, store_root, "--iidfile", iid, "-o", f"type=local,dest={out}")
    assert open(iid).read() != first
    assert open(os.path.join(out, "data.txt")).read() == "second\n0\n"

    out = str(tmp_path / "out-arg")
    build(context, store_root, "--build-arg", "N=5", "-o", f"type=local,dest={out}")
    assert open(os.path.join(out, "data.txt")).read() == "second\n5\n"


def test_missing_blob_makes_a_real_build(tmp_path, store_root, busybox_registry):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"FROM {busybox_registry.reference}\nRUN echo x > /x\n"})
    iid = str(tmp_path / "iid")
    build(context, store_root, "--iidfile", iid)
    config = os.path.join(store_root, "blobs", "sha256", open(iid).read().split(":")[1])
    os.unlink(config)                                        # e.g. removed by a prune
    archive = str(tmp_path / "image.tar")
    build(context, store_root, "--iidfile", iid, "-o", f"type=oci,dest={archive}")
    assert os.path.exists(config)
