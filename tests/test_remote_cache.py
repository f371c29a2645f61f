"""--cache-to / --cache-from: the build cache shared by two machines (two fresh store roots).

Every RUN calls a counting HTTP server on the host's loopback (`RUN --network=host wget …`), so
the test counts from outside the container which RUNs really ran; the progress must also show
every step CACHED, and the image ID must be the one machine A built.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.baseimage import push_busybox_image
from tests.support.httpserver import LoopbackHTTPServer
from tests.support.registry import Registry
from tests.support.images import build_image, step_lines, write_context

pytestmark = [pytest.mark.root, pytest.mark.overlay, pytest.mark.registry]
_STEP_FACTS = "application/vnd.build-image.cache.steps.v1+json"


class _Counting(BaseHTTPRequestHandler):
    hits: Counter
    lock: threading.Lock

    def do_GET(self):  # noqa: N802 (http.server's name)
        with self.lock:
            self.hits[self.path] += 1
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def runs():
    """A loopback server that counts each RUN's call: .hits[/run/NAME], .host."""
    handler = type("Counting", (_Counting,), {"hits": Counter(), "lock": threading.Lock()})
    with LoopbackHTTPServer(handler) as server:
        server.hits = handler.hits
        yield server


def _dockerfile(base: str, host: str) -> str:
    def run(name: str, command: str) -> str:
        return f"RUN --network=host wget -q -O /dev/null http://{host}/run/{name} && {command}\n"

    return (f"FROM {base} AS builder\n"
            "COPY lib.txt /work/\n"
            + run("lib", "cat /work/lib.txt > /work/lib.out")
            + "COPY src/ /work/src/\n"
            + run("compile", "cat /work/src/* > /work/app.out")
            + f"FROM {base}\n"
            + run("final", "echo final > /final.txt")
            + "COPY --from=builder /work/app.out /work/lib.out /app/\n")


def _context(tmp_path, base: str, host: str) -> str:
    return write_context(tmp_path / "ctx", {"Dockerfile": _dockerfile(base, host), "lib.txt": "lib\n",
                                            "src/main.txt": "main v1\n", "src/util.txt": "util\n"})


def _build(root: str, context: str, *args: str):
    proc = build_image("--root", root, "--progress", "plain", "--allow", "network.host", *args, context)
    steps = [s for s in step_lines(proc.stderr, "DONE") + step_lines(proc.stderr, "CACHED")
             if " FROM " not in s and not s.startswith("[internal]")]
    return proc, steps


def _iid(tmp_path, name: str) -> str:
    return (tmp_path / name).read_text()


def _machines(tmp_path):
    a, b = tmp_path / "machine-a", tmp_path / "machine-b"
    a.mkdir()
    b.mkdir()
    return str(a), str(b)


def _two_machines(tmp_path, runs, base, export: list[str], imports: list[str], steps: int = 6):
    """A builds with EXPORT, B (a fresh store) with IMPORTS: B's STEPS steps are all CACHED, no RUN
    ran on B, and the image IDs are equal. Returns B's store root and the context."""
    context = _context(tmp_path, base, runs.host)
    root_a, root_b = _machines(tmp_path)
    proc_a, steps_a = _build(root_a, context, "--iidfile", str(tmp_path / "a.iid"), *export)
    assert dict(runs.hits) == {"/run/lib": 1, "/run/compile": 1, "/run/final": 1}
    assert len(step_lines(proc_a.stderr, "DONE")) >= 5
    runs.hits.clear()
    proc_b, steps_b = _build(root_b, context, "--iidfile", str(tmp_path / "b.iid"),
                             "--metadata-file", str(tmp_path / "b.json"), *imports)
    assert dict(runs.hits) == {}, f"RUNs ran on machine B: {dict(runs.hits)}"
    assert len(step_lines(proc_b.stderr, "CACHED")) == len(steps_b) == steps
    assert [s for s in step_lines(proc_b.stderr, "DONE") if " FROM " not in s and "[internal]" not in s] == []
    assert _iid(tmp_path, "b.iid") == _iid(tmp_path, "a.iid")
    return root_b, context


def _change_source_and_rebuild(tmp_path, runs, root_b, context, imports: list[str],
                               ran_runs=("compile",), ran_steps=3):
    """One source file changes: B reruns only the steps that read it (and what follows them)."""
    with open(os.path.join(context, "src", "main.txt"), "w") as f:
        f.write("main v2\n")
    runs.hits.clear()
    proc, _ = _build(root_b, context, *imports)
    assert dict(runs.hits) == {f"/run/{name}": 1 for name in ran_runs}
    ran = [s.split("] ", 1)[1] for s in step_lines(proc.stderr, "DONE") if " FROM " not in s and "[internal]" not in s]
    assert ran[-3:] == [
        "COPY src/ /work/src/", f"RUN --network=host wget -q -O /dev/null http://{runs.host}/run/compile "
        "&& cat /work/src/* > /work/app.out", "COPY --from=builder /work/app.out /work/lib.out /app/"]
    assert len(ran) == ran_steps


@pytest.fixture
def logged_registry():
    """A registry of this test's own that logs every request, holding busybox:latest."""
    with Registry(access_log=True) as registry:
        push_busybox_image(registry.host)
        yield registry


def test_registry_cache_mode_max_gives_machine_b_every_step(tmp_path, runs, logged_registry):
    host = logged_registry.host
    cache = f"{host}/cache/app:buildcache"
    seen = len(logged_registry.requests())
    root_b, context = _two_machines(tmp_path, runs, f"{host}/busybox:latest",
                                    ["--cache-to", f"type=registry,ref={cache},mode=max"],
                                    ["--cache-from", f"type=registry,ref={cache}", "-t", f"{host}/app:b", "--push"])
    metadata = json.loads((tmp_path / "b.json").read_text())["buildimage.cache"]
    [imported] = metadata["imported"]
    # All six steps are CACHED, but only the final stage's two layers are needed for the image (the
    # builder stage is only shown): two records were used and two blobs downloaded.
    assert imported["ref"] == cache and imported["hits"] == 2 and imported["records"] == 6
    assert imported["blobs_downloaded"] == 2
    # From the registry's own log (A's requests and B's): what B fetched from the cache repository
    # is its config and those two blobs, once each; the base layer comes from busybox.
    requests = logged_registry.requests()[seen:]
    pushed = {parse_qs(urlsplit(path).query)["digest"][0] for method, path in requests
              if method == "PUT" and path.startswith("/v2/cache/app/blobs/uploads/")}
    fetched = [path.rsplit("/", 1)[1] for method, path in requests
               if method == "GET" and path.startswith("/v2/cache/app/blobs/")]
    assert len(fetched) == len(set(fetched)) == 3 and set(fetched) <= pushed
    # B's push of its image mounted every layer from the cache repository instead of sending it.
    mounts = [path for method, path in requests if method == "POST" and path.startswith("/v2/app/blobs/uploads/?")]
    assert len(mounts) == 3 and all("from=cache%2Fapp" in path for path in mounts)
    _change_source_and_rebuild(tmp_path, runs, root_b, context, ["--cache-from", f"type=registry,ref={cache}"])


def test_registry_cache_mode_min_has_only_the_final_stage(tmp_path, runs, busybox_registry):
    cache = f"{busybox_registry.host}/cache/min:latest"
    context = _context(tmp_path, busybox_registry.reference, runs.host)
    root_a, root_b = _machines(tmp_path)
    _build(root_a, context, "--cache-to", f"type=registry,ref={cache}", "--metadata-file", str(tmp_path / "a.json"))
    [exported] = json.loads((tmp_path / "a.json").read_text())["buildimage.cache"]["exported"]
    assert exported["mode"] == "min" and exported["records"] == 2 and exported["blobs_written"] >= 3
    runs.hits.clear()
    proc, steps = _build(root_b, context, "--cache-from", cache)
    # Only the final stage was exported; both its steps hit, so its builder stage is not needed.
    assert dict(runs.hits) == {} and len(steps) == 2 and len(step_lines(proc.stderr, "CACHED")) == 2
    assert not any("[builder" in s for s in steps)


def test_step_expected_to_hit_that_is_rejected_runs_after_its_inputs(tmp_path, runs, busybox_registry):
    """The last step's imported layer is tampered with: the builder stage it skipped is solved
    after all, then the step runs."""
    cache_dir = tmp_path / "cache-dir"
    context = _context(tmp_path, busybox_registry.reference, runs.host)
    root_a, root_b = _machines(tmp_path)
    _build(root_a, context, "--cache-to", f"type=local,dest={cache_dir}", *_image_layout(tmp_path))
    last = _layer_of(_local_cache_config(cache_dir), _final_layers(tmp_path)[2])   # COPY --from's
    blob = cache_dir / "blobs" / "sha256" / last["blob"][7:]
    blob.write_bytes(b"not the layer")
    runs.hits.clear()
    proc, steps = _build(root_b, context, "--cache-from", f"type=local,src={cache_dir}")
    assert dict(runs.hits) == {"/run/lib": 1, "/run/compile": 1}   # the final RUN still came from the cache
    assert [s for s in step_lines(proc.stderr, "CACHED")] == [s for s in steps if "RUN" in s and "final" in s]
    assert "rejected" in proc.stderr


def test_local_cache_dir_is_an_oci_layout_machine_b_reads(tmp_path, runs, busybox_registry):
    cache_dir = tmp_path / "cache-dir"
    again = tmp_path / "cache-of-b"
    root_b, context = _two_machines(tmp_path, runs, busybox_registry.reference,
                                    ["--cache-to", f"type=local,dest={cache_dir},mode=max"],
                                    ["--cache-from", f"type=local,src={cache_dir}",
                                     "--cache-to", f"type=local,dest={again},mode=max"])
    # B exports mode=max too, so it takes every step's layer (not only the image's) and passes all on.
    cache = json.loads((tmp_path / "b.json").read_text())["buildimage.cache"]
    assert cache["imported"][0]["hits"] == 6 and cache["exported"][0]["records"] == 6
    assert _local_cache_config(again) == _local_cache_config(cache_dir)
    index = json.loads((cache_dir / "index.json").read_text())
    [entry] = index["manifests"]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "latest"
    manifest = json.loads((cache_dir / "blobs" / "sha256" / entry["digest"][7:]).read_bytes())
    assert manifest["config"]["mediaType"] == "application/vnd.buildkit.cacheconfig.v0"
    config = json.loads((cache_dir / "blobs" / "sha256" / manifest["config"]["digest"][7:]).read_bytes())
    assert len(config["records"]) == 6
    # Its layers are the config's blobs, and build-image's steps' facts (which the config never names).
    assert {layer["blob"] for layer in config["layers"]} == {d["digest"] for d in manifest["layers"]
                                                             if d["mediaType"] != _STEP_FACTS}
    assert [d["mediaType"] for d in manifest["layers"]].count(_STEP_FACTS) == 1
    _change_source_and_rebuild(tmp_path, runs, root_b, context, ["--cache-from", f"type=local,src={cache_dir}"])


def test_inline_cache_travels_in_the_pushed_image(tmp_path, runs, busybox_registry):
    """Inline is mode=min: the final stage's two steps hit, so its builder stage is never solved."""
    image = f"{busybox_registry.host}/inline/app:1"
    root_b, context = _two_machines(tmp_path, runs, busybox_registry.reference,
                                    ["--cache-to", "type=inline", "-t", image, "--push"],
                                    ["--cache-from", image, "--cache-to", "type=inline"], steps=2)
    # Now COPY --from misses and needs the builder stage, which no cache has here: all of it runs.
    _change_source_and_rebuild(tmp_path, runs, root_b, context, ["--cache-from", image],
                               ran_runs=("lib", "compile"), ran_steps=5)


def test_inline_cache_of_mode_min_holds_the_final_chain(tmp_path, runs, busybox_registry, store_root):
    context = _context(tmp_path, busybox_registry.reference, runs.host)
    _build(store_root, context, "--cache-to", "type=inline", "-o", f"type=oci,dest={tmp_path / 'out'},tar=false")
    layout = tmp_path / "out"
    manifest_digest = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    manifest = json.loads((layout / "blobs/sha256" / manifest_digest[7:]).read_bytes())
    config = json.loads((layout / "blobs/sha256" / manifest["config"]["digest"][7:]).read_bytes())
    cache = json.loads(base64.b64decode(config["moby.buildkit.cache.v0"]))
    assert len(cache["records"]) == 2   # the final stage's RUN and COPY --from
    assert [layer["blob"] for layer in cache["layers"]] == [d["digest"] for d in manifest["layers"]]


def test_tampered_local_blob_is_rejected_and_the_step_runs(tmp_path, runs, busybox_registry):
    cache_dir = tmp_path / "cache-dir"
    context = _context(tmp_path, busybox_registry.reference, runs.host)
    root_a, root_b = _machines(tmp_path)
    _build(root_a, context, "--cache-to", f"type=local,dest={cache_dir},mode=max", *_image_layout(tmp_path))
    final_run = _layer_of(_local_cache_config(cache_dir), _final_layers(tmp_path)[1])   # the final stage's RUN
    blob = cache_dir / "blobs" / "sha256" / final_run["blob"][7:]
    blob.write_bytes(blob.read_bytes()[:-8] + b"tampered")
    runs.hits.clear()
    proc, _ = _build(root_b, context, "--cache-from", f"type=local,src={cache_dir}")
    assert runs.hits["/run/final"] == 1 and runs.hits["/run/lib"] == 0
    warnings = [line for line in proc.stderr.splitlines() if final_run["blob"] in line]
    assert len(warnings) == 1 and "rejected" in warnings[0] and "digest mismatch" in warnings[0]


def test_record_that_lies_about_its_layer_is_rejected(tmp_path, runs, busybox_registry):
    """A cache whose metadata was rewritten consistently (manifest, config and index.json all
    re-hashed) so that one step's record names another step's layer: the chain check refuses it."""
    cache_dir = tmp_path / "cache-dir"
    context = _context(tmp_path, busybox_registry.reference, runs.host)
    root_a, root_b = _machines(tmp_path)
    _build(root_a, context, "--cache-to", f"type=local,dest={cache_dir},mode=max", *_image_layout(tmp_path))
    config = _local_cache_config(cache_dir)
    # The lie is told about a step the image needs (the final stage's RUN): a record of a step that
    # nothing needs is never looked at (a builder stage's first step, when its last one hits).
    final_run = config["layers"].index(_layer_of(config, _final_layers(tmp_path)[1]))
    [liar] = [r for r in config["records"] if r["layers"][0]["layer"] == final_run]
    deepest = max(config["records"], key=lambda r: len(_chain(config, r["layers"][0]["layer"])))
    liar["layers"][0]["layer"] = deepest["layers"][0]["layer"]      # -> a last builder step's layer
    _rewrite_local_cache(cache_dir, config)
    runs.hits.clear()
    proc, _ = _build(root_b, context, "--cache-from", f"type=local,src={cache_dir}")
    warnings = [line for line in proc.stderr.splitlines() if "does not sit" in line]
    assert warnings[0].startswith(f"cache from {cache_dir}: record {liar['digest'][:19]}")
    # The lying record's step runs instead (and so does what stacks on it).
    ran = [s for s in step_lines(proc.stderr, "DONE") if " FROM " not in s and "[internal]" not in s]
    assert ran and ran[0].startswith("[stage-1 2/3] RUN") and runs.hits["/run/final"] == 1


def test_record_whose_diff_id_is_wrong_is_rejected(tmp_path, runs, busybox_registry):
    cache_dir = tmp_path / "cache-dir"
    context = _context(tmp_path, busybox_registry.reference, runs.host)
    root_a, root_b = _machines(tmp_path)
    _build(root_a, context, "--cache-to", f"type=local,dest={cache_dir},mode=max", *_image_layout(tmp_path))
    config = _local_cache_config(cache_dir)
    layer = _layer_of(config, _final_layers(tmp_path)[1])   # the final stage's RUN
    layer["annotations"]["diffID"] = "sha256:" + "0" * 64
    _rewrite_local_cache(cache_dir, config)
    runs.hits.clear()
    proc, _ = _build(root_b, context, "--cache-from", f"type=local,src={cache_dir}")
    assert runs.hits["/run/final"] == 1 and runs.hits["/run/lib"] == 0, proc.stderr
    assert "uncompressed layer digest mismatch" in proc.stderr


def test_tampered_cache_config_is_ignored_with_one_warning(tmp_path, runs, busybox_registry):
    cache_dir = tmp_path / "cache-dir"
    context = _context(tmp_path, busybox_registry.reference, runs.host)
    root_a, root_b = _machines(tmp_path)
    _build(root_a, context, "--cache-to", f"type=local,dest={cache_dir},mode=max")
    manifest = _local_manifest(cache_dir)
    path = cache_dir / "blobs" / "sha256" / manifest["config"]["digest"][7:]
    path.write_bytes(path.read_bytes().replace(b'"records"', b'"records" '))
    runs.hits.clear()
    proc, _ = _build(root_b, context, "--cache-from", f"type=local,src={cache_dir}")
    assert dict(runs.hits) == {"/run/lib": 1, "/run/compile": 1, "/run/final": 1}
    [warning] = [line for line in proc.stderr.splitlines() if "not used" in line]
    assert "digest mismatch" in warning and str(cache_dir) in warning


def test_missing_registry_cache_is_a_warning_not_a_failure(tmp_path, runs, busybox_registry, store_root):
    context = _context(tmp_path, busybox_registry.reference, runs.host)
    proc, _ = _build(store_root, context, "--cache-from", f"type=registry,ref={busybox_registry.host}/nothing:here")
    assert proc.returncode == 0 and "nothing:here not used" in proc.stderr


def test_export_failure_fails_the_build_unless_ignore_error(tmp_path, runs, busybox_registry, store_root):
    context = _context(tmp_path, busybox_registry.reference, runs.host)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory\n")
    failed = build_image("--root", store_root, "--allow", "network.host", "--cache-to",
                         f"type=local,dest={blocker}", context, check=False)
    errors = [line for line in failed.stderr.splitlines() if line.startswith("ERROR:")]
    assert failed.returncode == 1 and len(errors) == 1 and "failed to export cache" in errors[0]
    proc, _ = _build(store_root, context, "--cache-to", f"type=local,dest={blocker},ignore-error=true",
                     "--metadata-file", str(tmp_path / "m.json"))
    [exported] = json.loads((tmp_path / "m.json").read_text())["buildimage.cache"]["exported"]
    assert exported["error"] and "ignore-error=true" in proc.stderr


# -- helpers over a local cache directory

def _local_manifest(cache_dir) -> dict:
    entry = json.loads((cache_dir / "index.json").read_text())["manifests"][0]
    return json.loads((cache_dir / "blobs" / "sha256" / entry["digest"][7:]).read_bytes())


def _local_cache_config(cache_dir) -> dict:
    digest = _local_manifest(cache_dir)["config"]["digest"]
    return json.loads((cache_dir / "blobs" / "sha256" / digest[7:]).read_bytes())


def _chain(config: dict, index: int) -> list[dict]:
    chain = []
    while index != -1:
        chain.append(config["layers"][index])
        index = config["layers"][index]["parent"]
    return chain[::-1]


def _image_layout(tmp_path) -> tuple[str, str]:
    return "-o", f"type=oci,dest={tmp_path / 'image-a'},tar=false"


def _final_layers(tmp_path) -> list[str]:
    """The layer digests of the image A wrote with _image_layout: base, final RUN, COPY --from."""
    layout = tmp_path / "image-a"
    entry = json.loads((layout / "index.json").read_text())["manifests"][0]
    return [d["digest"] for d in json.loads((layout / "blobs/sha256" / entry["digest"][7:]).read_bytes())["layers"]]


def _layer_of(config: dict, blob: str) -> dict:
    [layer] = [layer for layer in config["layers"] if layer["blob"] == blob]
    return layer


def _rewrite_local_cache(cache_dir, config: dict) -> None:
    """Store CONFIG as the cache config, with a manifest and index.json that hash right."""
    def put(data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (cache_dir / "blobs" / "sha256" / digest[7:]).write_bytes(data)
        return digest

    data = json.dumps(config).encode()
    manifest = _local_manifest(cache_dir)
    manifest["config"] = {**manifest["config"], "digest": put(data), "size": len(data)}
    manifest_data = json.dumps(manifest).encode()
    index = json.loads((cache_dir / "index.json").read_text())
    index["manifests"][0] = {**index["manifests"][0], "digest": put(manifest_data), "size": len(manifest_data)}
    (cache_dir / "index.json").write_text(json.dumps(index))


def test_bad_cache_values_are_usage_errors(tmp_path, store_root):
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM scratch\n"})
    for flag, value, mentions in [("--cache-to", "type=inline,mode=max", "mode=min only"),
                                  ("--cache-to", "type=registry", "needs ref="),
                                  ("--cache-to", "type=local,dest=x,frob=1", "frob"),
                                  ("--cache-to", "type=registry,ref=r/x,compression=zstd", "compression"),
                                  ("--cache-from", "type=gha", "not supported"),
                                  ("--cache-from", "type=local", "needs src=")]:
        proc = build_image("--root", store_root, flag, value, context, check=False)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR:")]
        assert proc.returncode == 125 and len(errors) == 1 and mentions in errors[0], (value, proc.stderr)


@pytest.mark.docker
def test_inline_cache_of_an_image_docker_built_is_read(tmp_path, busybox_registry, private_dockerd, store_root):
    """Docker 20.10's BuildKit with BUILDKIT_INLINE_CACHE=1: its cache config reads without a
    warning. Its keys digest BuildKit's LLB, so none of them is one of build-image's: no hits."""
    import subprocess

    image = f"{busybox_registry.host}/docker/inline:1"
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"FROM {busybox_registry.reference}\n"
                                               "COPY a.txt /\nRUN cp /a.txt /b.txt\n", "a.txt": "a\n"})

    def docker(*args):
        proc = subprocess.run(private_dockerd.command(*args), env=private_dockerd.env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc

    docker("build", "--network=none", "--build-arg", "BUILDKIT_INLINE_CACHE=1", "-t", image, context)
    try:
        docker("push", image)
    finally:
        docker("rmi", "-f", image)
    proc = build_image("--root", store_root, "--progress", "plain", "--metadata-file", str(tmp_path / "m.json"),
                       "--cache-from", image, context)
    [imported] = json.loads((tmp_path / "m.json").read_text())["buildimage.cache"]["imported"]
    assert imported["records"] >= 2 and imported["hits"] == 0 and "error" not in imported
    assert "cache from" not in proc.stderr


def test_python_api_reports_the_cache_and_an_unchanged_rebuild_still_exports(tmp_path, runs, busybox_registry,
                                                                             store_root):
    """An unchanged rebuild normally skips the solve (the plan cache); with --cache-to it must not,
    or there would be nothing to export."""
    import builder

    context = _context(tmp_path, busybox_registry.reference, runs.host)
    options = builder.BuildOptions(context, root=store_root, allow=("network.host",))
    first = builder.build(options)
    assert builder.build(options).cache == {}
    cache_dir = tmp_path / "cache-dir"
    result = builder.build(builder.BuildOptions(context, root=store_root, allow=("network.host",),
                                                cache_to=[f"type=local,dest={cache_dir},mode=max"]))
    assert result.image_id == first.image_id and runs.hits["/run/lib"] == 1
    [exported] = result.cache["exported"]
    # the base layer and six step layers, the steps' facts, the cache config and its manifest
    assert (exported["records"], exported["layers"], exported["blobs_written"]) == (6, 7, 10)
    assert exported["manifest"] == json.loads((cache_dir / "index.json").read_text())["manifests"][0]["digest"]
