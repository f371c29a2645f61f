"""`build --verify-reproducible` and `builder.verify_reproducible`: two builds in fresh stores under
varied surroundings, compared; a difference is explained per layer and file, with known fixes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

import builder
from builder.lifecycle.diff import FieldChange, FileChange, ImageDiff, ImageSide, LayerDiff
from builder.verify import MTIME_FIX, suggest
from tests.support.images import build_image, write_context


EPOCH = "SOURCE_DATE_EPOCH=1700000000"


def _context(tmp_path, busybox_registry, run: str, name: str = "ctx") -> str:
    return write_context(tmp_path / name, {
        "Dockerfile": f"FROM {busybox_registry.reference}\nCOPY src/ /app/\n{run}\n",
        "src/a.txt": "a\n", "src/b/c.txt": "c\n", "src/z.txt": "z\n"})


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.registry
def test_a_deterministic_build_is_reproducible_with_the_normal_builds_id(tmp_path, busybox_registry, store_root):
    context = _context(tmp_path, busybox_registry, "RUN echo fixed > /fixed && mkdir /made && touch /made/x")
    proc = build_image("build", "--progress", "plain", "--verify-reproducible", "--build-arg", EPOCH, context,
                       check=False)
    assert proc.returncode == 0, proc.stderr
    [line] = proc.stdout.splitlines()
    assert line.startswith("reproducible: sha256:")
    assert "[second build] [3/3] RUN echo fixed" in proc.stderr      # the two builds' steps apart
    build_image("--root", store_root, "--build-arg", EPOCH, "--iidfile", str(tmp_path / "iid"), context)
    assert line == f"reproducible: {(tmp_path / 'iid').read_text()}"


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.registry
def test_a_date_written_by_a_run_is_reported_with_its_layer_step_and_fields(tmp_path, busybox_registry):
    context = _context(tmp_path, busybox_registry, "RUN date > /stamp")
    proc = build_image("build", "-q", "--verify-reproducible", context, check=False)
    assert proc.returncode == 1, proc.stderr
    out = proc.stdout
    assert out.startswith("not reproducible: sha256:")
    for varied in ("  time: started ", "TZ=Pacific/Kiritimati", "  umask: ", "  hostname: ", "  jobs: 1 -> ",
                   "(entries created in reverse order)", "  store root: ", "  environment: "):
        assert varied in out
    assert float(re.search(r"  time: started ([0-9.]+) s after the first", out).group(1)) >= 2.0
    assert "layer 2 (RUN /bin/sh -c date > /stamp # buildkit): sha256:" in out
    assert "  changed /stamp: digest sha256:" in out
    assert "layer 1" not in out and "layer 0" not in out        # the COPY and the base are the same
    assert '  history[2].created: "' in out                      # no SOURCE_DATE_EPOCH: times differ
    assert "  mtimes differ: set SOURCE_DATE_EPOCH and rewrite-timestamp=true" in out
    assert "  created times differ: set SOURCE_DATE_EPOCH" in out


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.registry
def test_json_report_names_the_known_causes(tmp_path, busybox_registry):
    context = _context(tmp_path, busybox_registry, (
        "RUN mkdir -p /var/log/apt /var/cache/ldconfig /app/__pycache__"
        " && cat /proc/sys/kernel/random/uuid > /var/log/apt/history.log"
        " && cat /proc/sys/kernel/random/uuid > /var/cache/ldconfig/aux-cache"
        " && cat /proc/sys/kernel/random/uuid > /app/__pycache__/m.cpython-311.pyc"))
    proc = build_image("build", "-q", "--verify-reproducible", "--format", "json", "--build-arg", EPOCH, context,
                       check=False)
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["reproducible"] is False and report["image_id"] != report["second_image_id"]
    [layer] = report["layers"]
    assert layer["index"] == 2 and layer["step_a"].startswith("RUN /bin/sh -c mkdir -p /var/log/apt")
    changed = {f["path"]: [x["field"] for x in f["fields"]] for f in layer["files"]}
    assert changed == {"/var/log/apt/history.log": ["digest"], "/var/cache/ldconfig/aux-cache": ["digest"],
                       "/app/__pycache__/m.cpython-311.pyc": ["digest"]}
    advice = {s["path"]: s["advice"] for s in report["suggestions"]}
    assert advice["/var/log/apt/history.log"] == ("/var/log/apt/history.log differs in content: logs with "
                                                  "timestamps; remove them in the same RUN (rm -f /var/log/apt/*.log)")
    assert "rm -f /var/cache/ldconfig/aux-cache" in advice["/var/cache/ldconfig/aux-cache"]
    assert "--invalidation-mode checked-hash" in advice["/app/__pycache__/m.cpython-311.pyc"]
    assert [c["field"] for c in report["config"]] == ["rootfs.diff_ids[2]"]   # the epoch fixed every time
    assert set(report["varied"]) >= {"time", "hostname", "umask", "jobs", "context", "store root", "environment"}


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.registry
def test_python_api_leaves_the_callers_process_as_it_was(tmp_path, busybox_registry):
    context = _context(tmp_path, busybox_registry, "RUN echo fixed > /fixed")
    before = (os.uname().nodename, os.environ.get("TZ"), dict(os.environ))
    umask = os.umask(0o022)
    os.umask(umask)
    result = builder.verify_reproducible(builder.BuildOptions(context, build_args={"SOURCE_DATE_EPOCH": "1700000000"},
                                                              outputs=["type=oci,dest=" + str(tmp_path / "o.tar")]))
    assert isinstance(result, builder.VerifyResult) and result.reproducible
    assert result.image_id == result.second_image_id and result.diff is None
    assert (tmp_path / "o.tar").stat().st_size > 0                 # the first build's outputs are written
    assert (os.uname().nodename, os.environ.get("TZ"), dict(os.environ)) == before
    assert os.umask(umask) == umask


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.registry
def test_tags_are_refused(tmp_path, busybox_registry):
    context = _context(tmp_path, busybox_registry, "RUN true")
    proc = build_image("build", "--verify-reproducible", "-t", "x", context, check=False)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1].startswith("ERROR: --verify-reproducible builds in temporary stores")


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.registry
def test_two_processes_in_different_surroundings_build_the_same_image(tmp_path, busybox_registry):
    """Cross-machine, as far as one machine goes: another root path, hostname (own UTS namespace),
    umask, TZ, working directory and an unrelated environment; the context copied elsewhere."""
    context = _context(tmp_path, busybox_registry, "RUN echo fixed > /fixed && mkdir -p /var/x && touch /var/x/y")
    other = tmp_path / "elsewhere" / "deeper"
    other.parent.mkdir(parents=True)
    subprocess.run(["cp", "-a", context, str(other)], check=True)
    first = build_image("--root", str(tmp_path / "root-one"), "-q", "--build-arg", EPOCH, context).stdout.strip()
    script = ('hostname other-machine && umask 077 && cd / && exec env -i PATH="$PATH" TZ=Asia/Kolkata LANG=C '
              f'UNRELATED=1 HOME=/nonexistent {sys.executable} -m builder.cli --root "$1" -q --build-arg {EPOCH} "$2"')
    proc = subprocess.run(["unshare", "--uts", "sh", "-c", script, "sh", str(tmp_path / "x" / "root-two"), str(other)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == first


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.registry
def test_a_base_only_the_callers_store_has_is_shared_not_pulled(tmp_path, busybox_registry, store_root):
    unreachable = "127.0.0.1:1/busybox:local"          # port 1: any pull would fail at once
    build_image("pull", "--root", store_root, busybox_registry.reference)
    build_image("tag", "--root", store_root, busybox_registry.reference, unreachable)
    before = build_image("images", "--root", store_root, "--digests", "--no-trunc").stdout
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"FROM {unreachable}\nRUN echo ok > /ok\n"})
    proc = build_image("build", "-q", "--root", store_root, "--verify-reproducible", "--build-arg", EPOCH, context,
                       check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("reproducible: sha256:")
    assert build_image("images", "--root", store_root, "--digests", "--no-trunc").stdout == before


@pytest.mark.parametrize("change, advised", [
    (FileChange("/var/log/dpkg.log", "changed", (FieldChange("digest", "sha256:1", "sha256:2"),)), True),
    (FileChange("/var/log/dpkg.log", "added"), True),
    (FileChange("/var/log/dpkg.log", "changed", (FieldChange("mtime", 1, 2),)), False),   # only a time
    (FileChange("/var/lib/apt/lists/.wh.partial", "changed", (FieldChange("mtime", 1, 2),)), False),
    (FileChange("/srv/app/data.bin", "changed", (FieldChange("digest", "sha256:1", "sha256:2"),)), False),
])
def test_known_causes_are_advised_for_content_and_presence_only(change, advised):
    side = ImageSide("x", "sha256:a", "sha256:m")
    found = ImageDiff(side, side, (), (LayerDiff(1, "sha256:l1", "sha256:l2", files=(change,)),))
    advice = [s for s in suggest(found) if s.path == change.path]
    assert bool(advice) is advised
    assert any(s.advice == MTIME_FIX for s in suggest(found)) is ("mtime" in {f.field for f in change.fields})


def test_base_names_to_share_are_read_with_build_args_and_global_arg_defaults():
    from builder.verify import _from_names

    text = ("ARG BASE=debian:12\nARG OTHER\nFROM ${BASE} AS build\nFROM --platform=$BUILDPLATFORM $OTHER\n"
            "FROM build\nFROM $UNSET/x\n")
    assert _from_names(text, {"OTHER": "alpine:3"}) == ["debian:12", "alpine:3", "build", "$UNSET/x"]
    assert _from_names(text, {"BASE": "local/debian:bookworm"})[0] == "local/debian:bookworm"


def test_many_files_of_one_cause_are_one_suggestion_listing_them():
    side = ImageSide("x", "sha256:a", "sha256:m")
    pyc = [f"/opt/venv/lib/pip/__pycache__/m{i}.cpython-311.pyc" for i in range(5)]
    files = tuple(FileChange(p, "changed", (FieldChange("digest", "sha256:1", "sha256:2"),))
                  for p in pyc + ["/var/log/dpkg.log"])
    found = ImageDiff(side, side, (), (LayerDiff(2, "sha256:l1", "sha256:l2", files=files),))
    dpkg, grouped = suggest(found)
    assert dpkg.path == "/var/log/dpkg.log" and dpkg.to_json()["paths"] == ["/var/log/dpkg.log"]
    assert grouped.path == "*.pyc" and grouped.paths == tuple(pyc)
    assert grouped.advice.startswith(f"5 files like {pyc[0]} differ: byte code records its source's mtime")


@pytest.mark.root
def test_a_failure_of_the_second_build_says_it_was_the_second():
    from builder.errors import BuildError, ExecutionError
    from builder.verify import _in_other_surroundings

    def failing_step():
        raise ExecutionError("/bin/sh -c make", 2, ["boom"], step="[stage-0 2/2] RUN make")

    def failing_build():
        raise BuildError("failed to compute cache key")

    with pytest.raises(ExecutionError) as step:
        _in_other_surroundings(failing_step)
    assert step.value.step == "[second build] [stage-0 2/2] RUN make" and step.value.last_lines == ("boom",)
    with pytest.raises(BuildError, match=r"^the second build \(in varied surroundings\) failed: failed to compute"):
        _in_other_surroundings(failing_build)
    hostname, umask = os.uname().nodename, os.umask(0o022)
    os.umask(umask)
    seen = _in_other_surroundings(lambda: (os.uname().nodename, os.environ["TZ"], os.umask(0o077)))[0]
    assert seen == ("verify-reproducible-second", "Pacific/Kiritimati", 0o077)
    assert os.uname().nodename == hostname and os.umask(umask) == umask     # the caller's, as they were
