"""`docker buildx build` flags with their buildx meaning: labels, annotations, the metadata file,
--no-cache-filter, --shm-size, --ulimit, --load/--push, --builder, the progress modes, the classic
flags that change nothing, outputs to stdout and tar, names in archives, --platform."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

from tests.support.images import build_image, step_lines, write_context


def cli(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """build-image with bytes output (an archive may be on stdout)."""
    proc = subprocess.run([sys.executable, "-m", "builder.cli", *args], capture_output=True, timeout=600,
                          stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"build-image {' '.join(args)} failed ({proc.returncode}): {proc.stderr.decode()}")
    return proc


def scratch_context(tmp_path, dockerfile: str = "FROM scratch\nLABEL from=dockerfile keep=1\nCOPY a /\n") -> str:
    return write_context(tmp_path / "ctx", {"Dockerfile": dockerfile, "a": "a\n"})


def inspect(root: str, name: str) -> dict:
    return json.loads(cli("inspect", "--root", root, name).stdout)[0]


def archive_members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_label_sets_image_labels_over_the_dockerfiles(store_root, tmp_path):
    context = scratch_context(tmp_path)
    cli("--root", store_root, "-t", "app:1", "--label", "from=cli", "--label", "org.example.new=yes", context)
    assert inspect(store_root, "app:1")["Config"]["Labels"] == {"from": "cli", "keep": "1", "org.example.new": "yes"}


def test_annotation_goes_on_the_manifest_and_metadata_file_has_buildx_keys(store_root, tmp_path):
    context = scratch_context(tmp_path)
    meta = tmp_path / "meta.json"
    proc = cli("--root", store_root, "-q", "-t", "app:1", "--annotation", "org.example.a=1",
               "--annotation", "manifest:org.example.b=2", "--metadata-file", str(meta),
               "-o", f"type=oci,dest={tmp_path / 'out.tar'}", context)
    image_id = proc.stdout.decode().strip()
    members = archive_members((tmp_path / "out.tar").read_bytes())
    [entry] = json.loads(members["index.json"])["manifests"]
    manifest = json.loads(members["blobs/sha256/" + entry["digest"].split(":")[1]])
    assert manifest["annotations"] == {"org.example.a": "1", "org.example.b": "2"}
    metadata = json.loads(meta.read_text())
    assert metadata["containerimage.config.digest"] == image_id
    assert metadata["containerimage.digest"] == entry["digest"]
    assert metadata["containerimage.descriptor"] == {"mediaType": entry["mediaType"], "digest": entry["digest"],
                                                     "size": entry["size"]}
    assert metadata["image.name"] == "docker.io/library/app:1"
    assert metadata["buildx.build.warnings"] == []


def test_metadata_file_carries_warnings_as_buildkit_does(store_root, tmp_path):
    context = scratch_context(tmp_path)
    meta = tmp_path / "meta.json"
    cli("--root", store_root, "--build-arg", "UNUSED=1", "--metadata-file", str(meta), context)
    [warning] = json.loads(meta.read_text())["buildx.build.warnings"]
    assert b"UNUSED" in base64.b64decode(warning["short"])
    assert "image.name" not in json.loads(meta.read_text())


def test_classic_flags_change_nothing_and_builder_is_noted(store_root, tmp_path):
    context = scratch_context(tmp_path)
    plain = cli("--root", store_root, "-q", context).stdout
    proc = cli("--root", store_root, "-q", "--rm", "--force-rm=true", "--compress", "--isolation=default",
               "--disable-content-trust", "--load", "--builder", "ci-builder", "--no-cache=false", context)
    assert proc.stdout == plain
    assert b"--builder ci-builder" in proc.stderr and b"ignored" in proc.stderr


def test_progress_modes(store_root, tmp_path):
    context = scratch_context(tmp_path)
    none = cli("--root", store_root, "--progress", "none", context)
    assert none.stdout == b"" and none.stderr == b""
    raw = cli("--root", store_root, context, env={"BUILDKIT_PROGRESS": "rawjson"})
    statuses = [json.loads(line) for line in raw.stderr.decode().splitlines()]
    names = [v["name"] for s in statuses for v in s.get("vertexes", []) if "name" in v and "completed" not in v]
    assert any("COPY a /" in n for n in names) and all(v["digest"].startswith("sha256:")
                                                       for s in statuses for v in s.get("vertexes", []))
    # --progress tty without a terminal is plain, as buildx
    tty = cli("--root", store_root, "--progress", "tty", context).stderr.decode()
    assert "\x1b[" not in tty and "#1 [internal] load build definition from Dockerfile" in tty
    # the flag wins over the environment
    assert cli("--root", store_root, "--progress", "none", context, env={"BUILDKIT_PROGRESS": "plain"}).stderr == b""


def test_outputs_to_stdout_and_tar(store_root, tmp_path):
    context = scratch_context(tmp_path)
    proc = cli("--root", store_root, "-q", "-o", "-", context)
    image_id = proc.stderr.decode().split()[-1]  # the archive is stdout: the ID goes to stderr
    assert image_id.startswith("sha256:")
    assert archive_members(proc.stdout) == {"a": b"a\n"}
    cli("--root", store_root, "-o", f"type=tar,dest={tmp_path / 'fs.tar'}", context)
    assert archive_members((tmp_path / "fs.tar").read_bytes()) == {"a": b"a\n"}
    docker = cli("--root", store_root, "-t", "app:1", "-o", "type=docker,dest=-", context).stdout
    assert json.loads(archive_members(docker)["manifest.json"])[0]["RepoTags"] == ["app:1"]
    oci = cli("--root", store_root, "-o", "type=oci,dest=-", context).stdout
    assert "index.json" in archive_members(oci)
    assert not (tmp_path / "-").exists() and not os.path.exists("-")


def test_name_attribute_names_the_image_in_archives(store_root, tmp_path):
    context = scratch_context(tmp_path)
    docker = cli("--root", store_root, "-t", "app:1", "-o",
                 f"type=docker,dest={tmp_path / 'd.tar'},name=example.com/team/app:2", context)
    assert docker.returncode == 0
    members = archive_members((tmp_path / "d.tar").read_bytes())
    assert json.loads(members["manifest.json"])[0]["RepoTags"] == ["example.com/team/app:2"]
    oci = cli("--root", store_root, "-o", "type=oci,dest=-,name=example.com/team/app:3", context).stdout
    [entry] = json.loads(archive_members(oci)["index.json"])["manifests"]
    assert entry["annotations"] == {"io.containerd.image.name": "example.com/team/app:3",
                                    "org.opencontainers.image.ref.name": "3"}


def test_platform_is_normalised(store_root, tmp_path):
    context = scratch_context(tmp_path)
    amd64 = cli("--root", store_root, "-q", "--platform", "linux/amd64", context).stdout
    assert cli("--root", store_root, "-q", "--platform", "linux/x86_64", context).stdout == amd64
    cli("--root", store_root, "-t", "arm:1", "--platform", "linux/aarch64", context)
    config = inspect(store_root, "arm:1")
    assert (config["Os"], config["Architecture"]) == ("linux", "arm64")
    several = cli("--root", store_root, "--platform", "linux/amd64,linux/arm64", context, check=False)
    assert several.returncode == 1 and b"multi-platform" in several.stderr


@pytest.mark.registry
def test_a_base_without_the_platform_fails(store_root, tmp_path, busybox_registry):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"FROM {busybox_registry.reference}\n"})
    proc = cli("--root", store_root, "--platform", "linux/arm64", context, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err
    assert "no match for platform" in err or "no image for platform" in err, err


@pytest.mark.registry
def test_push_is_an_image_output_with_push(store_root, tmp_path, registry):
    context = scratch_context(tmp_path)
    name = f"{registry.host}/pushed/app:1"
    image_id = cli("--root", store_root, "-q", "-t", name, "--push", context).stdout.decode().strip()
    out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--config", f"docker://{name}"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    assert json.loads(out)["config"]["Labels"]["from"] == "dockerfile"
    digest = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{name}"],
                            capture_output=True, check=True, timeout=60).stdout
    assert image_id.split(":")[1] in digest.decode()


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.registry
def test_no_cache_filter_reruns_only_that_stage(store_root, tmp_path, busybox_registry):
    context = write_context(tmp_path / "ctx", {"Dockerfile": (
        f"FROM {busybox_registry.reference} AS deps\nRUN echo deps > /deps\n"
        f"FROM {busybox_registry.reference} AS app\nCOPY --from=deps /deps /\nRUN echo app > /app\n")})
    build_image("--root", store_root, context)
    again = build_image("--root", store_root, "--progress", "plain", "--no-cache-filter", "app", context).stderr
    assert any("RUN echo deps" in s for s in step_lines(again, "CACHED"))
    assert any("RUN echo app" in s for s in step_lines(again, "DONE"))
    assert not any("RUN echo app" in s for s in step_lines(again, "CACHED"))
    missing = build_image("--root", store_root, "--no-cache-filter", "nope", context, check=False)
    assert missing.returncode == 1 and 'no stage named "nope"' in missing.stderr


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.registry
def test_shm_size_and_ulimit_apply_to_run(store_root, tmp_path, busybox_registry):
    context = write_context(tmp_path / "ctx", {"Dockerfile": (
        f"FROM {busybox_registry.reference}\n"
        "RUN grep ' /dev/shm ' /proc/mounts > /shm && ulimit -n > /nofile && ulimit -Hn >> /nofile\n")})
    out = tmp_path / "out"
    build_image("--root", store_root, "--shm-size", "128m", "--ulimit", "nofile=1024:2048",
                "-o", f"type=local,dest={out}", context)
    assert "size=131072k" in (out / "shm").read_text()
    assert (out / "nofile").read_text().split() == ["1024", "2048"]
    default = tmp_path / "default"
    build_image("--root", store_root, "-o", f"type=local,dest={default}", context)
    assert "size=65536k" in (default / "shm").read_text()


@pytest.mark.registry
def test_a_local_base_of_another_platform_is_looked_up_in_its_registry(store_root, tmp_path, registry):
    # arm64 and amd64 images under one name in the registry; the local store has only the amd64 one.
    context = scratch_context(tmp_path)
    name = f"{registry.host}/multi/base:1"
    cli("--root", store_root, "-t", name, "--push", "--platform", "linux/arm64", context)
    cli("--root", store_root, "-t", name, "--platform", "linux/amd64", context)
    derived = write_context(tmp_path / "derived", {"Dockerfile": f"FROM {name}\n"})
    cli("--root", store_root, "-t", "derived:arm", "--platform", "linux/arm64", derived)
    assert inspect(store_root, "derived:arm")["Architecture"] == "arm64"
    other = cli("--root", store_root, "--platform", "linux/s390x", derived, check=False)
    assert other.returncode == 1 and b"platform" in other.stderr and b"Traceback" not in other.stderr


def test_build_context_directory_serves_copy_from(store_root, tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM scratch\nCOPY --from=extra /o.txt /\nCOPY a /\n",
                                               "a": "a\n"})
    extra = write_context(tmp_path / "extra", {"o.txt": "one\n", "hidden.txt": "h\n", ".dockerignore": "hidden.txt\n"})
    out = tmp_path / "out"
    first = cli("--root", store_root, "-q", "--build-context", f"extra={extra}", "-o", f"type=local,dest={out}",
                context).stdout
    assert (out / "o.txt").read_text() == "one\n" and (out / "a").read_text() == "a\n"
    # the named context's content is in the cache key: a change is a new image, the same content the same one
    (tmp_path / "extra" / "o.txt").write_text("two\n")
    second = cli("--root", store_root, "-q", "--build-context", f"extra={extra}", context).stdout
    assert second != first
    (tmp_path / "extra" / "o.txt").write_text("one\n")
    assert cli("--root", store_root, "-q", "--build-context", f"extra={extra}", context).stdout == first
    hidden = write_context(tmp_path / "ctx2", {"Dockerfile": "FROM scratch\nCOPY --from=extra /hidden.txt /\n"})
    proc = cli("--root", store_root, "--build-context", f"extra={extra}", hidden, check=False)
    assert proc.returncode == 1 and b'"/hidden.txt": not found' in proc.stderr


def test_build_context_errors(store_root, tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM scratch AS extra\nFROM scratch\n"
                                                             "COPY --from=extra /a /\n"})
    for value, message in ((f"extra={tmp_path}", b"a stage has that name"),
                           ("x=ftp://host/file", b"ftp contexts are not supported"),
                           (f"x={tmp_path / 'missing'}", b"is not a directory"),
                           ("novalue", b"use NAME=DIR")):
        proc = cli("--root", store_root, "--build-context", value, context, check=False)
        assert proc.returncode == 1 and message in proc.stderr and b"Traceback" not in proc.stderr, proc.stderr


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.registry
def test_build_context_image_and_run_mount(store_root, tmp_path, busybox_registry):
    context = write_context(tmp_path / "ctx", {"Dockerfile": (
        "FROM base\nRUN --mount=from=files,target=/files cp /files/f.txt /copied\n"
        "COPY --from=tools /bin/busybox /busybox-again\n")})
    files = write_context(tmp_path / "files", {"f.txt": "from a named context\n"})
    out = tmp_path / "out"
    build_image("--root", store_root, "--build-context", f"base=docker-image://{busybox_registry.reference}",
                "--build-context", f"tools=docker-image://{busybox_registry.reference}",
                "--build-context", f"files={files}", "-o", f"type=local,dest={out}", context)
    assert (out / "copied").read_text() == "from a named context\n"
    assert (out / "busybox-again").read_bytes() == (out / "bin" / "busybox").read_bytes()


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.registry
def test_build_context_oci_layout_serves_from_and_copy_from(store_root, tmp_path, busybox_registry):
    made = write_context(tmp_path / "made", {"Dockerfile": f"FROM {busybox_registry.reference}\n"
                                                           "RUN echo from-layout > /hello\n"})
    layout = tmp_path / "layout"
    build_image("--root", store_root, "-o", f"type=oci,dest={layout},tar=false,name=made:v2", made)
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM base\nCOPY --from=files /hello /copied\n"})
    fresh = str(tmp_path / "fresh-store")     # a store that has never seen the image
    for ref in (f"oci-layout://{layout}:v2", f"oci-layout://{layout}@{digest}", f"oci-layout://{layout}"):
        out = tmp_path / f"out-{len(ref)}"
        build_image("--root", fresh, "--build-context", f"base={ref}", "--build-context", f"files={ref}",
                    "-o", f"type=local,dest={out}", context)
        assert (out / "hello").read_text() == "from-layout\n" and (out / "copied").read_text() == "from-layout\n"
    missing_tag = cli("--root", fresh, "--build-context", f"base=oci-layout://{layout}:nope", context, check=False)
    assert missing_tag.returncode == 1 and b"no image tagged 'nope'" in missing_tag.stderr, missing_tag.stderr


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.registry
def test_a_tampered_oci_layout_blob_is_refused(store_root, tmp_path, busybox_registry):
    made = write_context(tmp_path / "made", {"Dockerfile": f"FROM {busybox_registry.reference}\nRUN echo x > /x\n"})
    layout = tmp_path / "layout"
    build_image("--root", store_root, "-o", f"type=oci,dest={layout},tar=false", made)
    manifest_digest = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    manifest = json.loads((layout / "blobs" / "sha256" / manifest_digest[7:]).read_bytes())
    top = layout / "blobs" / "sha256" / manifest["layers"][-1]["digest"][7:]
    top.write_bytes(top.read_bytes()[:-1] + b"!")
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM base\n"})
    proc = cli("--root", str(tmp_path / "fresh"), "--build-context", f"base=oci-layout://{layout}", context,
               check=False)
    assert proc.returncode == 1 and b"does not match its digest" in proc.stderr and b"Traceback" not in proc.stderr
