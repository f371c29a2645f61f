"""COPY --link: the copy lands in a layer of its own, made from an empty tree and stacked on the
stage, so it stays cached when the layers below it change."""

from __future__ import annotations

import json
import os
import tarfile

import pytest

from tests.support.images import build_image, step_lines, write_context

pytestmark = [pytest.mark.root, pytest.mark.overlay, pytest.mark.registry]


def dockerfile(base: str) -> str:
    return f"""\
FROM {base}
ARG STAMP
RUN echo "$STAMP" > /stamp
WORKDIR /var/www
COPY --link app.txt .
COPY --link --chown=123:456 conf/ /etc/app/
RUN cat /var/www/app.txt /stamp > /combined
"""


def layer_names(archive: str, index: int) -> list[str]:
    """Entry names of layer INDEX of the image in an OCI archive."""
    with tarfile.open(archive) as outer:
        index_json = json.load(outer.extractfile("index.json"))
        manifest = json.load(outer.extractfile("blobs/sha256/" + index_json["manifests"][0]["digest"][7:]))
        layer = manifest["layers"][index]["digest"][7:]
        with tarfile.open(fileobj=outer.extractfile(f"blobs/sha256/{layer}")) as tf:
            return sorted(m.name for m in tf.getmembers())


def test_link_layer_is_independent_and_stays_cached(tmp_path, store_root, busybox_registry):
    context = write_context(tmp_path / "ctx", {"Dockerfile": dockerfile(busybox_registry.reference),
                                               "app.txt": "app\n", "conf/app.ini": "x=1\n"})
    archive = str(tmp_path / "first.tar")
    build_image("--root", store_root, "--build-arg", "STAMP=one", context, "-o", f"type=oci,dest={archive}")
    # busybox, RUN, WORKDIR, two linked copies, RUN: the copy layers hold only what they copy
    assert layer_names(archive, 3) == ["var", "var/www", "var/www/app.txt"]
    assert layer_names(archive, 4) == ["etc", "etc/app", "etc/app/app.ini"]

    out = str(tmp_path / "out")
    second = build_image("--root", store_root, "--build-arg", "STAMP=two", "--progress", "plain", context,
                         "-o", f"type=local,dest={out}")
    cached = step_lines(second.stderr, "CACHED")
    assert any("COPY --link app.txt ." in s for s in cached)        # the layer below changed: still cached
    assert any("COPY --link --chown=123:456 conf/" in s for s in cached)
    assert not any(" RUN " in s for s in cached)
    with open(f"{out}/combined") as f:
        assert f.read() == "app\ntwo\n"
    st = os.stat(f"{out}/etc/app/app.ini")
    assert (st.st_uid, st.st_gid) == (123, 456)
    assert os.path.exists(f"{out}/bin/busybox")


def test_link_with_chown_names_is_rejected(tmp_path, store_root):
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM scratch\nCOPY --link --chown=app:app a /\n",
                                               "a": "x"})
    proc = build_image("--root", store_root, context, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("ERROR: Dockerfile:2: --chown=app:app uses a user or group name")
