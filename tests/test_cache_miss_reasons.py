"""Why did this step miss the cache? Each test changes one input between two builds of the same
Dockerfile and checks the `#N cache miss: STEP: REASON` line of the step that reran, and that
every step that was not CACHED has exactly one such line."""

from __future__ import annotations

import json
import os
import re

import pytest

from tests.support.images import build_image, write_context

pytestmark = [pytest.mark.root, pytest.mark.overlay, pytest.mark.registry]


def build(context, root, *extra):
    return build_image("--root", root, "--progress", "plain", *extra, context).stderr


def misses(progress: str) -> dict[str, str]:
    """Step name -> the reason its `#N cache miss:` line gives, and a check that every step that
    ran (DONE/ERROR) has one and no CACHED step has."""
    names, reasons, ended = {}, {}, {}
    for line in progress.splitlines():
        number, _, rest = line.partition(" ")
        if not number.startswith("#"):
            continue
        if rest.startswith("[") and not rest.startswith("[internal]"):
            names.setdefault(number, rest)
        elif rest.startswith("cache miss: "):
            assert number not in reasons, f"two reasons for {number}"
            reasons[number] = rest.removeprefix("cache miss: ")
        elif rest.split(" ")[0] in ("DONE", "CACHED", "ERROR"):
            ended[number] = rest.split(" ")[0]
    for number, name in names.items():
        if ended.get(number) == "CACHED":
            assert number not in reasons, f"{name} was CACHED but has a miss reason"
        elif " FROM " not in name:   # a base image that was already in the store is no miss
            assert number in reasons, f"{name} ran without a cache-miss line:\n{progress}"
    return {names[n]: reason for n, reason in reasons.items()}


def only(progress: str, step: str) -> str:
    found = {name: reason for name, reason in misses(progress).items() if name.endswith(step)}
    assert len(found) == 1, f"expected one miss for {step!r}, got {found}:\n{progress}"
    return next(iter(found.values()))


@pytest.fixture
def context(tmp_path, busybox_registry):
    files = {f"src/file{i}.txt": f"file {i}\n" for i in range(5)}
    return write_context(tmp_path / "ctx", {
        "Dockerfile": (f"FROM {busybox_registry.reference}\n"
                       "ARG VERSION=1.0\n"
                       "ENV MODE=fast\n"
                       "COPY src/ /app/\n"
                       "RUN echo $VERSION $MODE > /version\n"
                       "RUN cat /app/file0.txt > /copy\n"),
        **files})


def test_first_build_has_no_previous_build(context, store_root):
    reasons = misses(build(context, store_root))
    assert {r for name, r in reasons.items() if " FROM " not in name} == {
                                                 "COPY src/ /app/: no previous build of this step",
                                                 "RUN echo $VERSION $MODE > /version: no previous build of this step",
                                                 "RUN cat /app/file0.txt > /copy: no previous build of this step"}


def test_changed_file_names_the_file_and_its_digests(context, store_root):
    build(context, store_root)
    with open(os.path.join(context, "src", "file3.txt"), "w") as f:
        f.write("changed\n")
    progress = build(context, store_root)
    assert re.fullmatch(r"COPY src/ /app/: src/file3\.txt changed \(sha256:[0-9a-f]{8}… → sha256:[0-9a-f]{8}…\), "
                        r"1 of 5 files", only(progress, "COPY src/ /app/")), progress
    # The RUNs after it read the same args and env: their parent was rebuilt.
    copy_number = next(line.split()[0] for line in progress.splitlines() if line.endswith("COPY src/ /app/"))
    assert only(progress, "RUN echo $VERSION $MODE > /version") == \
        f"RUN echo $VERSION $MODE > /version: parent step {copy_number} was rebuilt"


def test_added_and_removed_files(context, store_root):
    build(context, store_root)
    os.unlink(os.path.join(context, "src", "file1.txt"))
    write_context(context, {"src/new.txt": "new\n"})
    reason = only(build(context, store_root), "COPY src/ /app/")
    assert reason == "COPY src/ /app/: src/file1.txt removed, src/new.txt added, 2 of 5 files"


def test_changed_build_arg_gives_old_and_new_value(context, store_root):
    build(context, store_root, "--build-arg", "VERSION=1.0")
    progress = build(context, store_root, "--build-arg", "VERSION=1.1")
    assert only(progress, "RUN echo $VERSION $MODE > /version") == \
        'RUN echo $VERSION $MODE > /version: build arg VERSION changed ("1.0" → "1.1")'
    assert "COPY src/ /app/" not in " ".join(misses(progress))   # before the ARG is read: cached


def test_changed_env_a_run_sees(context, store_root):
    build(context, store_root)
    dockerfile = os.path.join(context, "Dockerfile")
    text = open(dockerfile).read()
    with open(dockerfile, "w") as f:
        f.write(text.replace("ENV MODE=fast", "ENV MODE=slow"))
    reason = only(build(context, store_root), "RUN echo $VERSION $MODE > /version")
    assert reason == 'RUN echo $VERSION $MODE > /version: env MODE changed ("fast" → "slow")'


def test_changed_dockerfile_line(context, store_root):
    build(context, store_root)
    dockerfile = os.path.join(context, "Dockerfile")
    text = open(dockerfile).read()
    with open(dockerfile, "w") as f:
        f.write(text.replace("RUN cat /app/file0.txt > /copy", "RUN cat /app/file1.txt > /copy"))
    reason = only(build(context, store_root), "RUN cat /app/file1.txt > /copy")
    assert reason == ('RUN cat /app/file1.txt > /copy: Dockerfile line 6 changed '
                      '("RUN cat /app/file0.txt > /copy" → "RUN cat /app/file1.txt > /copy")')


def test_no_cache_and_no_cache_filter(context, store_root):
    build(context, store_root)
    progress = build(context, store_root, "--no-cache")
    assert {r.partition(": ")[2] for r in misses(progress).values()} == {"--no-cache"}
    progress = build(context, store_root, "--no-cache-filter", "0")
    assert {r.partition(": ")[2] for r in misses(progress).values()} == {"--no-cache-filter 0"}


def test_changed_base_image_digest(tmp_path, store_root, busybox_registry):
    host = busybox_registry.host
    pusher = str(tmp_path / "pusher")

    def push_base(content: str) -> None:
        base = write_context(tmp_path / f"base-{content}", {
            "Dockerfile": f"FROM {busybox_registry.reference}\nRUN echo {content} > /base.txt\n"})
        build(base, pusher, "-o", f"type=image,name={host}/moving:latest,push=true")

    push_base("one")
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"FROM {host}/moving:latest\nRUN cat /base.txt\n"})
    build(context, store_root)
    push_base("two")
    progress = build(context, store_root, "--pull")
    reason = only(progress, "RUN cat /base.txt")
    assert re.fullmatch(rf"RUN cat /base\.txt: base image {re.escape(host)}/moving:latest digest changed "
                        r"\(sha256:[0-9a-f]{8}… → sha256:[0-9a-f]{8}…\)", reason), progress
    from_reasons = [r for name, r in misses(progress).items() if " FROM " in name]
    assert all("base image digest changed" in r for r in from_reasons), from_reasons


def test_reasons_in_metadata_file_and_rawjson(context, store_root, tmp_path):
    import base64

    build(context, store_root)
    metadata = str(tmp_path / "metadata.json")
    stderr = build_image("--root", store_root, "--progress", "rawjson", "--build-arg", "VERSION=2",
                         "--metadata-file", metadata, context).stderr
    recorded = json.load(open(metadata))["buildimage.cache.misses"]
    # Both RUNs see the ARG in their environment, as in BuildKit: both keys changed.
    assert [(m["step"], m["reason"]) for m in recorded] == [
        ("[5/6] RUN echo $VERSION $MODE > /version", 'build arg VERSION changed ("1.0" → "2")'),
        ("[6/6] RUN cat /app/file0.txt > /copy", 'build arg VERSION changed ("1.0" → "2")')]
    logs = [base64.b64decode(log["data"]).decode() for line in stderr.splitlines()
            for log in json.loads(line).get("logs", [])]
    assert 'cache miss: RUN echo $VERSION $MODE > /version: build arg VERSION changed ("1.0" → "2")\n' in logs


def test_secret_value_never_in_the_history(tmp_path, store_root, busybox_registry):
    secret = "s3cr3t-value-4711"
    src = tmp_path / "token"
    src.write_text(secret)
    context = write_context(tmp_path / "ctx", {
        "Dockerfile": (f"FROM {busybox_registry.reference}\n"
                       "RUN --mount=type=secret,id=token,env=TOKEN test -n \"$TOKEN\" && echo ok > /ok\n")})
    build(context, store_root, "--secret", f"id=token,src={src}")
    histories = os.path.join(store_root, "cache", "steps")
    files = os.listdir(histories)
    assert files
    for name in files:
        text = open(os.path.join(histories, name)).read()
        assert "TOKEN" in text or "token" in text   # the mount is recorded by its id ...
        assert secret not in text                     # ... never by its value


def test_changed_workdir_and_bind_mounted_file(tmp_path, store_root, busybox_registry):
    context = write_context(tmp_path / "ctx", {
        "Dockerfile": (f"FROM {busybox_registry.reference}\n"
                       "WORKDIR /one\n"
                       "RUN --mount=type=bind,source=conf,target=/conf cat /conf/a.conf > /seen\n"),
        "conf/a.conf": "a=1\n", "conf/b.conf": "b=1\n"})
    build(context, store_root)
    write_context(context, {"conf/b.conf": "b=2\n"})
    reason = only(build(context, store_root), "cat /conf/a.conf > /seen")
    assert re.fullmatch(r"RUN --mount=type=bind,source=conf,target=/conf cat /conf/a\.conf > /seen: "
                        r"conf/b\.conf changed \(sha256:[0-9a-f]{8}… → sha256:[0-9a-f]{8}…\), 1 of 2 files", reason)
    dockerfile = os.path.join(context, "Dockerfile")
    text = open(dockerfile).read()
    with open(dockerfile, "w") as f:
        f.write(text.replace("WORKDIR /one", "WORKDIR /two"))
    reason = only(build(context, store_root), "cat /conf/a.conf > /seen")
    assert reason.endswith(': WORKDIR changed ("/one" → "/two")'), reason


def test_pruned_record_keeps_its_key(context, store_root):
    build(context, store_root)
    # The records go (and the unchanged-rebuild record, which would skip the solve altogether).
    for kind in ("records", "plans"):
        directory = os.path.join(store_root, "cache", kind)
        for name in os.listdir(directory):
            if name.endswith(".json"):
                os.unlink(os.path.join(directory, name))
    reasons = {r.partition(": ")[2] for r in misses(build(context, store_root)).values()}
    assert reasons == {"same cache key as before, but its cache record or layer is gone (pruned?)"}


def test_python_api_events_carry_the_reason(context, store_root):
    import builder
    from builder import events

    builder.build(builder.BuildOptions(context, root=store_root))
    with open(os.path.join(context, "src", "file0.txt"), "w") as f:
        f.write("edited\n")
    seen: list = []
    builder.build(builder.BuildOptions(context, root=store_root), progress=seen.append)
    started = {e.id: e for e in seen if isinstance(e, events.Started)}
    finished = [e for e in seen if isinstance(e, events.Finished) and e.cache_miss is not None]
    by_step = {e.cache_miss.step: e.cache_miss for e in finished}
    copy = by_step["COPY src/ /app/"]
    assert copy.reason.startswith("src/file0.txt changed (sha256:") and copy.parent is None
    last = by_step["RUN cat /app/file0.txt > /copy"]
    assert last.parent in started and last.parent_name == started[last.parent].name
    assert last.reason == f"parent step {started[last.parent].name} was rebuilt"
    # A layer step's reason is known when it starts, and is the same when it ends.
    assert all(started[e.id].cache_miss == e.cache_miss for e in finished if "FROM" not in e.cache_miss.step)
    assert started[last.parent].inputs   # each step names the steps it reads, as BuildKit's vertices


def test_reason_of_a_heredoc_run_is_one_line(tmp_path, store_root, busybox_registry):
    context = write_context(tmp_path / "ctx", {
        "Dockerfile": (f"FROM {busybox_registry.reference}\nARG V=1\n"
                       "RUN <<EOF\necho $V > /v\necho done\nEOF\n")})
    build(context, store_root)
    progress = build(context, store_root, "--build-arg", "V=2")
    lines = [line for line in progress.splitlines() if " cache miss: " in line]
    assert len(lines) == 1 and lines[0].endswith(': build arg V changed ("1" → "2")'), progress
