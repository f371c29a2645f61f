"""Why did a step miss, on a machine whose only earlier build is the one that wrote the imported
cache? Machine A (its own store root and checkout) exports the cache; machine B (a fresh store
root, another checkout of the same sources) changes one input and builds with --cache-from: the
reasons compare with A's build, carried as the cache's steps' facts, not "no previous build"."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil

import pytest

from tests.support.images import write_context
from tests.test_cache_miss_reasons import build, misses, only

pytestmark = [pytest.mark.root, pytest.mark.overlay, pytest.mark.registry]

STEP_FACTS = "application/vnd.build-image.cache.steps.v1+json"
IMPORTED = " (compared with the imported cache)"
COPY = "COPY src/ /app/"
RUN_VERSION = "RUN echo $VERSION > /version"
RUN_CAT = "RUN cat /app/app.py > /copy"


@pytest.fixture
def checkouts(tmp_path, busybox_registry):
    """(A's context, a function giving B a copy of it at another path)."""
    context = write_context(tmp_path / "checkout-a", {
        "Dockerfile": (f"FROM {busybox_registry.reference}\n"
                       "ARG VERSION=1.0\n"
                       f"{COPY}\n"
                       f"{RUN_VERSION}\n"
                       f"{RUN_CAT}\n"),
        "src/app.py": "print('v1')\n", "src/util.py": "pass\n", "src/data.txt": "data\n"})
    made = []

    def copy_for_b() -> str:
        dest = str(tmp_path / f"checkout-b{len(made)}")
        shutil.copytree(context, dest)
        made.append(dest)
        return dest
    return context, copy_for_b


def _store(tmp_path, name: str) -> str:
    root = tmp_path / name
    root.mkdir()
    return str(root)


def _change_app(context: str) -> None:
    with open(os.path.join(context, "src", "app.py"), "w") as f:
        f.write("print('v2')\n")


def _assert_file_reason(progress: str) -> str:
    """The COPY's reason names app.py with two digests; returns the old one's first 8 hex digits."""
    reason = only(progress, COPY)
    found = re.fullmatch(re.escape(COPY) + r": src/app\.py changed \(sha256:([0-9a-f]{8})… → "
                         r"sha256:([0-9a-f]{8})…\), 1 of 3 files" + re.escape(IMPORTED), reason)
    assert found and found.group(1) != found.group(2), progress
    copy_number = next(line.split()[0] for line in progress.splitlines() if line.endswith(COPY))
    assert only(progress, RUN_VERSION) == f"{RUN_VERSION}: parent step {copy_number} was rebuilt"
    return found.group(1)


def test_registry_cache_explains_a_changed_file_and_a_changed_build_arg(tmp_path, checkouts, busybox_registry):
    context, copy_for_b = checkouts
    cache = f"{busybox_registry.host}/explain/{tmp_path.name.lower()}:cache"
    build(context, _store(tmp_path, "a"), "--cache-to", f"type=registry,ref={cache},mode=max")

    # B1: the same sources but VERSION=1.1: the RUN that sees it says so; the COPY is CACHED.
    b1, b1_root = copy_for_b(), _store(tmp_path, "b1")
    progress = build(b1, b1_root, "--cache-from", f"type=registry,ref={cache}", "--build-arg", "VERSION=1.1")
    assert only(progress, RUN_VERSION) == f'{RUN_VERSION}: build arg VERSION changed ("1.0" → "1.1"){IMPORTED}'
    assert not any(name.endswith(COPY) for name in misses(progress))
    # Its own history now exists and wins: the next change is compared with B1's last build.
    progress = build(b1, b1_root, "--cache-from", f"type=registry,ref={cache}", "--build-arg", "VERSION=1.2")
    assert only(progress, RUN_VERSION) == f'{RUN_VERSION}: build arg VERSION changed ("1.1" → "1.2")'

    # B2: app.py changed: the COPY names it, with A's digest and B's.
    b2 = copy_for_b()
    _change_app(b2)
    _assert_file_reason(build(b2, _store(tmp_path, "b2"), "--cache-from", f"type=registry,ref={cache}"))


def test_local_cache_of_mode_min_explains_a_changed_file(tmp_path, checkouts):
    context, copy_for_b = checkouts
    cache_dir = tmp_path / "cache-dir"
    build(context, _store(tmp_path, "a"), "--cache-to", f"type=local,dest={cache_dir}")
    facts = _facts_blob(cache_dir)
    steps = json.loads(facts.read_bytes())["steps"]
    assert [s["text"] for s in steps][1:] == [COPY, RUN_VERSION, RUN_CAT]
    assert json.loads(facts.read_bytes())["dockerfile"] == "Dockerfile"   # not A's checkout path
    assert str(context).encode() not in facts.read_bytes()
    [copy] = [s for s in steps if s["text"] == COPY]
    [files] = [r["files"] for r in copy["facts"]["reads"]]
    b = copy_for_b()
    _change_app(b)
    old = _assert_file_reason(build(b, _store(tmp_path, "b"), "--cache-from", f"type=local,src={cache_dir}"))
    assert files["src/app.py"].removeprefix("sha256:").startswith(old)   # A's digest, from the cache


def test_inline_cache_carries_the_facts_in_its_cache_config(tmp_path, checkouts, busybox_registry):
    context, copy_for_b = checkouts
    image = f"{busybox_registry.host}/explain-inline/{tmp_path.name.lower()}:1"
    layout = tmp_path / "layout"
    build(context, _store(tmp_path, "a"), "--cache-to", "type=inline", "-t", image, "--push",
          "-o", f"type=oci,dest={layout},tar=false")
    manifest_digest = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    manifest = json.loads((layout / "blobs/sha256" / manifest_digest[7:]).read_bytes())
    config = json.loads((layout / "blobs/sha256" / manifest["config"]["digest"][7:]).read_bytes())
    cache = json.loads(base64.b64decode(config["moby.buildkit.cache.v0"]))
    assert [s["text"] for s in cache["build-image.steps.v1"]["steps"]][1:] == [COPY, RUN_VERSION, RUN_CAT]
    b = copy_for_b()
    _change_app(b)
    _assert_file_reason(build(b, _store(tmp_path, "b"), "--cache-from", image))


def test_a_builder_stages_build_args_travel_only_as_digests(tmp_path, busybox_registry):
    """mode=max exports a builder stage that the image never shows: its RUN's build args and env
    are in the facts as digests, so a token passed as a build arg is not published with the
    cache, and a change is still named. The final stage's are the image's own (its history shows
    them): plain."""
    context = write_context(tmp_path / "checkout-a", {"Dockerfile": (
        f"FROM {busybox_registry.reference} AS builder\n"
        "ARG TOKEN\n"
        "RUN echo built > /out\n"
        f"FROM {busybox_registry.reference}\n"
        "ARG VERSION=1.0\n"
        "COPY --from=builder /out /out\n"
        "RUN echo $VERSION > /version\n")})
    cache_dir = tmp_path / "cache-dir"
    build(context, _store(tmp_path, "a"), "--cache-to", f"type=local,dest={cache_dir},mode=max",
          "--build-arg", "TOKEN=tok-3e81c0ffee")
    facts = _facts_blob(cache_dir).read_bytes()
    assert b"tok-3e81c0ffee" not in facts and b"VERSION=1.0" in facts
    progress = build(context, _store(tmp_path, "b"), "--cache-from", f"type=local,src={cache_dir}",
                     "--build-arg", "TOKEN=tok-other", "--build-arg", "VERSION=1.1")
    old, new = (hashlib.sha256(v.encode()).hexdigest()[:8] for v in ("tok-3e81c0ffee", "tok-other"))
    assert only(progress, "RUN echo built > /out") == (
        f"RUN echo built > /out: build arg TOKEN changed (sha256:{old}… → sha256:{new}…){IMPORTED}")
    assert only(progress, "RUN echo $VERSION > /version") == (
        f'RUN echo $VERSION > /version: build arg VERSION changed ("1.0" → "1.1"){IMPORTED}')


def test_tampered_facts_blob_is_a_warning_and_the_build_goes_on(tmp_path, checkouts):
    context, copy_for_b = checkouts
    cache_dir = tmp_path / "cache-dir"
    build(context, _store(tmp_path, "a"), "--cache-to", f"type=local,dest={cache_dir},mode=max")
    facts = _facts_blob(cache_dir)
    facts.write_bytes(facts.read_bytes().replace(b"VERSION=1.0", b"VERSION=6.6"))
    b = copy_for_b()
    progress = build(b, _store(tmp_path, "b"), "--cache-from", f"type=local,src={cache_dir}",
                     "--build-arg", "VERSION=1.1")
    [warning] = [line for line in progress.splitlines() if "step facts" in line]
    assert f"cache from {cache_dir}: its step facts are not used: " in warning and "digest mismatch" in warning
    assert only(progress, RUN_VERSION) == f"{RUN_VERSION}: no previous build of this step"
    assert "CACHED" in progress   # the layers of the cache were still used: only the facts were refused


def test_a_build_that_misses_nothing_never_reads_the_facts(tmp_path, checkouts):
    """The facts are read only to explain a step's miss: a B whose every step the cache gives
    never notices that the facts blob is gone. When a step misses, it is a warning."""
    context, copy_for_b = checkouts
    cache_dir = tmp_path / "cache-dir"
    build(context, _store(tmp_path, "a"), "--cache-to", f"type=local,dest={cache_dir},mode=max")
    _facts_blob(cache_dir).unlink()
    b, b_root = copy_for_b(), _store(tmp_path, "b")
    progress = build(b, b_root, "--cache-from", f"type=local,src={cache_dir}")
    assert "step facts" not in progress and [n for n in misses(progress) if " FROM " not in n] == []
    progress = build(b, _store(tmp_path, "b-again"), "--cache-from", f"type=local,src={cache_dir}",
                     "--build-arg", "VERSION=1.1")
    [warning] = [line for line in progress.splitlines() if "step facts" in line]
    assert "is missing" in warning
    assert only(progress, RUN_VERSION) == f"{RUN_VERSION}: no previous build of this step"


def _facts_blob(cache_dir):
    entry = json.loads((cache_dir / "index.json").read_text())["manifests"][0]
    manifest = json.loads((cache_dir / "blobs" / "sha256" / entry["digest"][7:]).read_bytes())
    [facts] = [d for d in manifest["layers"] if d["mediaType"] == STEP_FACTS]
    assert manifest["config"]["mediaType"] == "application/vnd.buildkit.cacheconfig.v0"
    config = json.loads((cache_dir / "blobs" / "sha256" / manifest["config"]["digest"][7:]).read_bytes())
    assert facts["digest"] not in {layer["blob"] for layer in config["layers"]}   # BuildKit never reads it
    return cache_dir / "blobs" / "sha256" / facts["digest"][7:]
