"""Build arguments: scoping of platform ARGs, proxy ARGs, per-stage FROM --platform."""

from __future__ import annotations

import os

import pytest

from tests.support.images import build_image, write_context

pytestmark = [pytest.mark.root, pytest.mark.overlay, pytest.mark.registry]


def test_platform_args_only_inside_a_stage_that_declares_them(tmp_path, store_root, busybox_registry):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM {busybox_registry.reference}
RUN echo "before=[$TARGETARCH]" > /args
ARG TARGETARCH
ARG BUILDPLATFORM
RUN echo "after=[$TARGETARCH] build=[$BUILDPLATFORM]" >> /args
"""})
    out = str(tmp_path / "out")
    build_image("--root", store_root, "-o", f"type=local,dest={out}", context)
    with open(os.path.join(out, "args")) as f:
        assert f.read() == "before=[]\nafter=[amd64] build=[linux/amd64]\n"


def test_proxy_build_args_reach_run_but_not_history(tmp_path, store_root, busybox_registry):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM {busybox_registry.reference}
RUN echo "proxy=[$HTTP_PROXY]" > /proxy
"""})
    out = str(tmp_path / "out")
    proc = build_image("--root", store_root, "--build-arg", "HTTP_PROXY=http://proxy.invalid:3128",
                       "--progress", "plain", "-o", f"type=local,dest={out}", "-t", "proxied", context)
    with open(os.path.join(out, "proxy")) as f:
        assert f.read() == "proxy=[http://proxy.invalid:3128]\n"
    assert "were not consumed" not in proc.stderr
    history = build_image("history", "--root", store_root, "--no-trunc", "proxied")
    assert "proxy.invalid" not in history.stdout


def test_unconsumed_build_arg_warns(tmp_path, store_root, busybox_registry):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"FROM {busybox_registry.reference}\nRUN true\n"})
    proc = build_image("--root", store_root, "--build-arg", "NOBODY_USES=1", context)
    assert "[Warning] One or more build-args [NOBODY_USES] were not consumed" in proc.stderr
