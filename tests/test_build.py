"""End to end: `build-image` over a base image from a real registry, checked by skopeo, umoci, runc."""

from __future__ import annotations

import json
import os
import tarfile

import pytest

from tests.support.images import build_image, run_oci_archive, skopeo_inspect, step_lines, write_context

pytestmark = [pytest.mark.root, pytest.mark.overlay, pytest.mark.registry, pytest.mark.tools]

MULTI_STAGE = """\
ARG BASE
FROM ${BASE} AS builder
WORKDIR /src
COPY message.txt ./
RUN tr a-z A-Z < message.txt > loud.txt && echo built >> loud.txt

FROM ${BASE}
ARG VERSION=1.0
ENV GREETING=hello \\
    TARGET=world
WORKDIR /app
COPY --from=builder /src/loud.txt ./
COPY config/ /etc/app/
RUN echo "$GREETING $TARGET from $(pwd)" > /app/run.txt && chown -R app:app /app
USER app
EXPOSE 8080
LABEL org.example.kind=test
CMD ["sh", "-c", "cat /app/loud.txt /app/run.txt /etc/app/app.conf; id -u; pwd"]
"""


@pytest.fixture
def context(tmp_path):
    return write_context(tmp_path / "ctx", {
        "Dockerfile": MULTI_STAGE,
        "message.txt": "quiet words\n",
        "config/app.conf": "level=3\n",
        "config/unused.tmp": "x",
        ".dockerignore": "**/*.tmp\n",
    })


def build(context, root, base, *extra):
    return build_image("--root", root, "--build-arg", f"BASE={base}", "--progress", "plain", *extra, context)


def test_multi_stage_build_runs_under_runc(context, store_root, busybox_registry, tmp_path):
    archive = str(tmp_path / "image.tar")
    build(context, store_root, busybox_registry.reference, "-o", f"type=oci,dest={archive}",
          "-t", "example/app:1")

    info = skopeo_inspect(f"oci-archive:{archive}")
    assert "GREETING=hello" in info["Env"] and "TARGET=world" in info["Env"]
    assert info["Labels"] == {"org.example.kind": "test"}
    # busybox's one layer + WORKDIR, COPY, COPY, RUN of the final stage
    assert len(info["Layers"]) == 5

    config = skopeo_inspect(f"oci-archive:{archive}", "--config")
    assert config["config"]["User"] == "app"
    assert config["config"]["WorkingDir"] == "/app"
    assert config["config"]["ExposedPorts"] == {"8080/tcp": {}}
    history = config["history"]
    assert [h.get("empty_layer", False) for h in history].count(False) == len(config["rootfs"]["diff_ids"])
    runs = [h["created_by"] for h in history if h["created_by"].startswith("RUN ")]
    assert runs == ['RUN |1 VERSION=1.0 /bin/sh -c echo "$GREETING $TARGET from $(pwd)" > /app/run.txt '
                    '&& chown -R app:app /app # buildkit']

    out = run_oci_archive(archive, str(tmp_path / "run"), tag="1")
    assert out.splitlines() == ["QUIET WORDS", "built", "hello world from /app", "level=3", "1000", "/app"]


def test_rebuild_is_fully_cached_and_same_image(context, store_root, busybox_registry, tmp_path):
    iid = str(tmp_path / "iid")
    first = build(context, store_root, busybox_registry.reference, "--iidfile", iid)
    first_id = open(iid).read()
    assert first_id.startswith("sha256:")
    assert len(step_lines(first.stderr, "DONE")) >= 6

    second = build(context, store_root, busybox_registry.reference, "--iidfile", iid)
    cached = step_lines(second.stderr, "CACHED")
    assert [s for s in step_lines(second.stderr, "DONE") if " RUN " in s or " COPY " in s] == []
    assert len([s for s in cached if " RUN " in s]) == 2
    assert open(iid).read() == first_id


def test_changing_one_file_reruns_only_that_copy_and_what_follows(context, store_root, busybox_registry,
                                                                 tmp_path):
    build(context, store_root, busybox_registry.reference)
    with open(os.path.join(context, "config/app.conf"), "w") as f:
        f.write("level=4\n")
    os.utime(os.path.join(context, "message.txt"), (1, 1))  # mtime alone must not invalidate
    second = build(context, store_root, busybox_registry.reference)
    rebuilt = step_lines(second.stderr, "DONE")
    assert any("COPY config/ /etc/app/" in s for s in rebuilt)
    assert any("RUN echo" in s for s in rebuilt)
    cached = step_lines(second.stderr, "CACHED")
    assert any("COPY message.txt" in s for s in cached)
    assert any("RUN tr a-z A-Z" in s for s in cached)
    assert any("COPY --from=builder" in s for s in cached)


def test_no_cache_reruns_everything(context, store_root, busybox_registry):
    build(context, store_root, busybox_registry.reference)
    again = build(context, store_root, busybox_registry.reference, "--no-cache")
    assert [s for s in step_lines(again.stderr, "CACHED") if " RUN " in s] == []
    assert len([s for s in step_lines(again.stderr, "DONE") if " RUN " in s]) == 2


def test_docker_archive_and_local_outputs(context, store_root, busybox_registry, tmp_path):
    docker_tar = str(tmp_path / "docker.tar")
    local_dir = str(tmp_path / "rootfs")
    build(context, store_root, busybox_registry.reference, "-t", "app:v2",
          "-o", f"type=docker,dest={docker_tar}", "-o", f"type=local,dest={local_dir}")
    with tarfile.open(docker_tar) as tf:
        manifest = json.load(tf.extractfile("manifest.json"))
    assert manifest[0]["RepoTags"] == ["app:v2"]
    info = skopeo_inspect(f"docker-archive:{docker_tar}")
    assert "GREETING=hello" in info["Env"]
    with open(os.path.join(local_dir, "app/run.txt")) as f:
        assert f.read() == "hello world from /app\n"
    assert os.path.islink(os.path.join(local_dir, "bin/sh"))
    assert not os.path.exists(os.path.join(local_dir, "etc/app/unused.tmp"))  # .dockerignore


def test_target_builds_only_what_it_needs(store_root, busybox_registry, tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM {busybox_registry.reference} AS broken
RUN exit 7

FROM {busybox_registry.reference} AS good
RUN echo good > /good.txt

FROM broken
RUN echo never
"""})
    local_dir = str(tmp_path / "out")
    proc = build_image("--root", store_root, "--progress", "plain", "--target", "good",
                       "-o", f"type=local,dest={local_dir}", context)
    assert "exit 7" not in proc.stderr
    assert open(os.path.join(local_dir, "good.txt")).read() == "good\n"


def test_from_scratch_with_copy(store_root, tmp_path):
    context = write_context(tmp_path / "ctx", {
        "Dockerfile": "FROM scratch\nCOPY hello.txt /data/\nENV A=1\nCMD [\"/x\"]\n",
        "hello.txt": "hi\n",
    })
    archive = str(tmp_path / "scratch.tar")
    build_image("--root", store_root, "-o", f"type=oci,dest={archive}", context)
    config = skopeo_inspect(f"oci-archive:{archive}", "--config")
    assert config["config"]["Env"] == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "A=1"]
    assert len(config["rootfs"]["diff_ids"]) == 1
    with tarfile.open(archive) as tf:
        names = tf.getnames()
    assert "index.json" in names and "oci-layout" in names
