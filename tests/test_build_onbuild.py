"""ONBUILD: triggers are recorded, then run when a later build starts FROM that image."""

from __future__ import annotations

import os

import pytest

from tests.support.images import build_image, skopeo_inspect, write_context

pytestmark = [pytest.mark.root, pytest.mark.overlay, pytest.mark.registry, pytest.mark.tools]


def test_onbuild_triggers_run_in_the_child_build(tmp_path, store_root, busybox_registry):
    parent = write_context(tmp_path / "parent", {"Dockerfile": f"""\
FROM {busybox_registry.reference}
ONBUILD COPY marker.txt /from-child/
ONBUILD RUN echo "triggered in $(cat /from-child/marker.txt)" > /triggered
"""})
    parent_tar = str(tmp_path / "parent.tar")
    build_image("--root", store_root, "-t", "onbuild-parent:1", "-o", f"type=oci,dest={parent_tar}", parent)
    assert skopeo_inspect(f"oci-archive:{parent_tar}", "--config", "--raw")["config"]["OnBuild"] == [
        "COPY marker.txt /from-child/",
        'RUN echo "triggered in $(cat /from-child/marker.txt)" > /triggered',
    ]

    child = write_context(tmp_path / "child", {"Dockerfile": "FROM onbuild-parent:1\nRUN cat /triggered\n",
                                               "marker.txt": "child"})
    child_tar = str(tmp_path / "child.tar")
    out_dir = str(tmp_path / "out")
    build_image("--root", store_root, "-o", f"type=oci,dest={child_tar}", "-o", f"type=local,dest={out_dir}",
                child)
    with open(os.path.join(out_dir, "triggered")) as f:
        assert f.read() == "triggered in child\n"
    config = skopeo_inspect(f"oci-archive:{child_tar}", "--config", "--raw")
    assert "OnBuild" not in config["config"] or not config["config"]["OnBuild"]
