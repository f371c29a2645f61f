"""`build --verify-reproducible`: build the same inputs twice, varying what should not matter, and
explain any difference with the diff engine (builder/lifecycle/diff.py).

    first build                          second build
    a fresh temporary store, with the    another fresh store, at a deeper path, with the first
    bases the caller's store has         one's base images (never pulled again)
    the context as given                 a copy at another path, its entries created in reverse
                                         order (other inode numbers, other directory order)
    --jobs 1                             --jobs N (at least 2)
    the process's TZ, umask, hostname    at least 2 s later, TZ=Pacific/Kiritimati (UTC+14),
    and environment                      umask 077, its own UTS namespace with another hostname
                                         (when the process may make one), LANG/LC_ALL and extra
                                         variables that are no build args

The second build runs on its own thread: the hostname change is that thread's UTS namespace (its
worker threads and step processes inherit it), so the caller's process keeps its own. TZ, umask
and the environment are process-wide; they are restored when the build ends.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import shutil
import tempfile
import threading
import time

from builder.errors import BuildError, ExecutionError
from builder import events
from builder.plumbing.records import dataclass, replace

SECOND_TZ = "Pacific/Kiritimati"
SECOND_UMASK = 0o077
SECOND_HOSTNAME = "verify-reproducible-second"
MIN_DELAY = 2.0

# Known causes: a path pattern (fnmatch over the whole path) and the usual fix.
KNOWN_CAUSES = (
    ("/var/log/apt/*.log", "logs with timestamps; remove them in the same RUN (rm -f /var/log/apt/*.log)"),
    ("/var/log/dpkg.log", "dpkg's log has timestamps; remove it in the same RUN"),
    ("/var/log/alternatives.log", "update-alternatives' log has timestamps; remove it in the same RUN"),
    ("/var/cache/ldconfig/aux-cache", "ldconfig's cache records file times and inodes; "
                                      "rm -f /var/cache/ldconfig/aux-cache in the same RUN"),
    ("/var/cache/debconf/*-old", "debconf's backups; remove them in the same RUN"),
    ("/var/lib/apt/lists/*", "apt's package lists change with the mirror; rm -rf /var/lib/apt/lists/* in the same RUN"),
    ("/var/cache/apt/*.bin", "apt's binary caches; apt-get clean in the same RUN"),
    ("*.pyc", "byte code records its source's mtime: declare ARG SOURCE_DATE_EPOCH in the stage (py_compile "
              "then writes hash-checked byte code), set PYTHONDONTWRITEBYTECODE=1, or "
              "python -m compileall --invalidation-mode checked-hash"),
    ("/etc/shadow", "useradd and passwd record the day of the change: declare ARG SOURCE_DATE_EPOCH in the stage"),
    ("/etc/*-", "a backup of the file before the change: remove it in the same RUN"),
)
GROUPED_OVER = 3   # more files of one cause than this: one suggestion for them all
MTIME_FIX = "mtimes differ: set SOURCE_DATE_EPOCH and rewrite-timestamp=true"
CREATED_FIX = "created times differ: set SOURCE_DATE_EPOCH"


@dataclass(frozen=True)
class Suggestion:
    path: str            # the file, the pattern of a group of files, or "" for the whole image
    advice: str
    paths: tuple[str, ...] = ()    # every file it is about

    def to_json(self) -> dict:
        return {"path": self.path, "advice": self.advice, "paths": list(self.paths or ((self.path,) if self.path else ()))}


@dataclass(frozen=True)
class VerifyResult:
    reproducible: bool
    image_id: str                       # the first build's
    second_image_id: str
    varied: tuple[tuple[str, str], ...]   # what the second build changed: (what, how)
    diff: object = None                 # builder.lifecycle.diff.ImageDiff when they differ
    suggestions: tuple[Suggestion, ...] = ()

    def to_json(self) -> dict:
        out = {"reproducible": self.reproducible, "image_id": self.image_id,
               "second_image_id": self.second_image_id, "varied": dict(self.varied)}
        if self.diff is not None:
            report = self.diff.to_json()
            out["config"], out["layers"] = report["config"], report["layers"]
        out["suggestions"] = [s.to_json() for s in self.suggestions]
        return out


def verify_reproducible(options, progress: events.Progress = events.ignore, executor=None) -> VerifyResult:
    """Build OPTIONS (a `BuildOptions`) twice in fresh temporary stores and compare the images.

    OPTIONS' file outputs (oci, docker, local) are written by the first build; tags and pushes
    are refused, since the stores do not outlive the check."""
    from builder.pipeline import build

    if options.tags or any(o.type in ("image", "registry") for o in options.outputs):
        raise BuildError("--verify-reproducible builds in temporary stores: it takes no -t or "
                         "-o type=image|registry (use -o type=oci|docker|local)")
    with tempfile.TemporaryDirectory(prefix="build-image-verify-") as scratch:
        first_root = os.path.join(scratch, "a", "store")
        second_root = os.path.join(scratch, "second", "elsewhere", "store-root")
        jobs = max(2, options.jobs or os.cpu_count() or 2)
        _copy_local_bases(options, first_root)
        started = time.monotonic()
        first = build(replace(options, root=first_root, jobs=1, iidfile=None), progress, executor)
        _copy_named_images(first_root, second_root)
        context_copy = os.path.join(scratch, "second", "context-copy")
        _copy_reversed(os.path.abspath(options.context), context_copy)
        second_options = _second_options(options, second_root, context_copy, jobs)
        time.sleep(max(0.0, started + MIN_DELAY - time.monotonic()))
        delay = time.monotonic() - started
        second, varied = _in_other_surroundings(lambda: build(second_options, _as_second(progress), executor))
        varied = (("time", f"started {delay:.1f} s after the first, TZ={SECOND_TZ}"),
                  *varied, ("jobs", f"1 -> {jobs}"),
                  ("context", f"{os.path.abspath(options.context)} -> {context_copy} (entries created in reverse order)"),
                  ("store root", f"{first_root} -> {second_root}"))
        if options.iidfile:
            with open(options.iidfile, "w") as f:
                f.write(first.image_id)
        if first.image_id == second.image_id:
            return VerifyResult(True, first.image_id, second.image_id, varied)
        from builder.image.manifest import read_image
        from builder.lifecycle.diff import diff_images
        from builder.store import Store

        store_a, store_b = Store(first_root), Store(second_root)
        with store_a, store_b:
            found = diff_images(store_a, read_image(store_a.blobs, first.manifest_digest),
                                store_b, read_image(store_b.blobs, second.manifest_digest),
                                source_a="first build", source_b="second build")
        return VerifyResult(False, first.image_id, second.image_id, varied, found, suggest(found))


def _second_options(options, root: str, context: str, jobs: int):
    """The second build: its store, the context's copy, N jobs, and no export but one image output
    in the first output's timestamp mode (the image the first build names), bases never pulled."""
    from builder.pipeline import OutputSpec

    mode = "false" if options.outputs and not options.outputs[0].rewrite_timestamp else "true"
    return replace(options, root=root, jobs=jobs, context=context, dockerfile=_moved_dockerfile(options, context),
                   outputs=(OutputSpec("image", (("push", "false"), ("rewrite-timestamp", mode))),),
                   iidfile=None, pull=False)


def suggest(found) -> tuple[Suggestion, ...]:
    """The usual fixes for the differences FOUND shows, where the cause is a known one: one per
    file, or one for a cause's many files."""
    by_cause: dict[int, list[tuple[str, str]]] = {}
    mtimes = False
    for layer in found.layers:
        for change in layer.files:
            fields = {f.field for f in change.fields}
            mtimes = mtimes or "mtime" in fields
            if change.change == "changed" and fields <= {"mtime"} or "/.wh." in change.path:
                continue  # only a time (the mtime advice covers it), or a whiteout: no file's own cause
            for index, (pattern, _) in enumerate(KNOWN_CAUSES):
                if fnmatch.fnmatch(change.path, pattern):
                    what = "differs in content" if "digest" in fields else f"is {change.change}"
                    by_cause.setdefault(index, []).append((change.path, what))
                    break
    out: list[Suggestion] = []
    for index, files in sorted(by_cause.items()):
        pattern, advice = KNOWN_CAUSES[index]
        files = sorted(dict(files).items())
        if len(files) > GROUPED_OVER:
            paths = tuple(path for path, _ in files)
            out.append(Suggestion(pattern, f"{len(files)} files like {paths[0]} differ: {advice}", paths))
        else:
            out += [Suggestion(path, f"{path} {what}: {advice}") for path, what in files]
    if mtimes:
        out.append(Suggestion("", MTIME_FIX))
    if any(c.field == "created" or (c.field.startswith("history[") and c.field.endswith(".created"))
           for c in found.config):
        out.append(Suggestion("created", CREATED_FIX))
    return tuple(out)


def _moved_dockerfile(options, context_copy: str) -> str | None:
    """The Dockerfile of the copy: the same file, moved with the context if it lives in it."""
    if options.dockerfile is None:
        return None
    context = os.path.abspath(options.context)
    path = os.path.abspath(options.dockerfile)
    if os.path.commonpath([context, path]) == context:
        return os.path.join(context_copy, os.path.relpath(path, context))
    return path


def _copy_reversed(source: str, dest: str) -> None:
    """SOURCE copied to DEST with every directory's entries created in reverse name order; modes,
    owners and mtimes kept (they are inputs), whatever the umask."""
    os.makedirs(dest)
    for name in sorted(os.listdir(source), reverse=True):
        src, dst = os.path.join(source, name), os.path.join(dest, name)
        if os.path.islink(src):
            os.symlink(os.readlink(src), dst)
        elif os.path.isdir(src):
            _copy_reversed(src, dst)
        else:
            shutil.copy2(src, dst)
        with contextlib.suppress(OSError):
            st = os.lstat(src)
            os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    shutil.copystat(source, dest)


_FROM = re.compile(r"^\s*FROM\s+(?:--\S+\s+)*(\S+)", re.IGNORECASE | re.MULTILINE)


def _copy_local_bases(options, first_root: str) -> None:
    """The base images the caller's store already has, as a build there would use them (the
    Dockerfile's literal FROM names), shared into the first store; the rest are pulled."""
    from builder.registry.reference import InvalidReference, parse_reference
    from builder.store import Store, default_root

    user_root = options.root or default_root()
    dockerfile = options.dockerfile or os.path.join(options.context, "Dockerfile")
    if not os.path.isdir(os.path.join(user_root, "images")):
        return
    try:
        with open(dockerfile, encoding="utf-8") as f:
            names = _from_names(f.read(), options.build_args)
    except OSError:
        return  # the build itself reports it
    user, target = Store(user_root), Store(first_root)
    with user, target:
        for name in names:
            if "$" in name or name.lower() == "scratch":
                continue
            try:
                ref = str(parse_reference(name))
            except InvalidReference:
                continue
            digest = user.images.resolve(ref)
            if digest is not None:
                _copy_document(user, target, digest)
                target.images.tag(ref, digest)


_GLOBAL_ARG = re.compile(r"^\s*ARG\s+(\w+)(?:=(\S*))?", re.IGNORECASE | re.MULTILINE)
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def _from_names(text: str, build_args) -> list[str]:
    """The FROM names of TEXT with `$NAME`/`${NAME}` taken from the build args and the global ARG
    defaults; a name left with a `$` is skipped by the caller (the build expands it properly)."""
    first_from = _FROM.search(text)
    head = text[:first_from.start()] if first_from else text
    values = {name: (default or "").strip("\"'") for name, default in _GLOBAL_ARG.findall(head)}
    values.update(build_args)
    return [_VARIABLE.sub(lambda m: values.get(m.group(1) or m.group(2), m.group(0)), name)
            for name in _FROM.findall(text)]


def _copy_named_images(from_root: str, to_root: str) -> None:
    """Every image the first store names (the bases it pulled) into the second store, read-only
    copies of their blobs, under the same names."""
    from builder.store import Store

    source, target = Store(from_root), Store(to_root)
    with source, target:
        for name, digest in source.images.list():
            _copy_document(source, target, digest)
            target.images.tag(name, digest)


def _copy_document(source, target, digest: str, depth: int = 0) -> None:
    if depth > 4 or not source.blobs.has(digest):
        return
    with source.blobs.open(digest) as f:
        data = f.read()
    _copy_blob(source, target, digest)
    try:
        doc = json.loads(data)
    except ValueError:
        return
    if not isinstance(doc, dict):
        return
    for entry in doc.get("manifests") or ():
        _copy_document(source, target, entry.get("digest", ""), depth + 1)
    for entry in [doc.get("config") or {}, *(doc.get("layers") or ())]:
        if entry.get("digest") and source.blobs.has(entry["digest"]):
            _copy_blob(source, target, entry["digest"])


def _copy_blob(source, target, digest: str) -> None:
    """Blobs never change once stored: a hard link shares one read-only, else it is copied."""
    if target.blobs.has(digest):
        return
    try:
        os.link(source.blobs.path(digest), target.blobs.path(digest))
        return
    except (AttributeError, OSError):
        pass
    with source.blobs.open(digest) as f, target.blobs.writer() as writer:
        while chunk := f.read(1 << 20):
            writer.write(chunk)
        writer.commit()


def _as_second(progress: events.Progress) -> events.Progress:
    """The second build's events under their own ids, its steps named as the second build's."""
    def forward(event: events.Event) -> None:
        event = replace(event, id="second-build/" + event.id)
        if isinstance(event, events.Started):
            event = replace(event, name="[second build] " + event.name)
        progress(event)
    return forward


def _in_other_surroundings(run):
    """RUN() on a thread of its own, in the second build's surroundings; (its result, what varied)."""
    outcome: dict = {}
    varied: list[tuple[str, str]] = []

    def target() -> None:
        try:
            varied.append(("hostname", _own_hostname()))
            outcome["result"] = run()
        except BaseException as error:  # re-raised on the caller's thread
            outcome["error"] = error

    with _process_surroundings(varied):
        thread = threading.Thread(target=target, name="verify-second-build")
        thread.start()
        thread.join()
    error = outcome.get("error")
    if isinstance(error, ExecutionError):   # a step that fails only in the varied surroundings
        error.step = f"[second build] {error.step}"
    elif isinstance(error, BuildError):
        raise BuildError(f"the second build (in varied surroundings) failed: {error}") from None
    if error is not None:
        raise error
    return outcome["result"], tuple(varied)


def _own_hostname() -> str:
    from builder.plumbing import linux

    before = os.uname().nodename
    try:
        linux.unshare(linux.CLONE_NEWUTS)
        linux.sethostname(SECOND_HOSTNAME)
    except OSError as error:
        return f"not varied ({before}: no UTS namespace: {error.strerror})"
    return f"{before} -> {os.uname().nodename} (own UTS namespace)"


@contextlib.contextmanager
def _process_surroundings(varied: list):
    """TZ, umask and environment variables that are no build args, changed and then restored."""
    saved_env = dict(os.environ)
    old_umask = os.umask(SECOND_UMASK)
    noise = {"TZ": SECOND_TZ, "LANG": "C", "LC_ALL": "C",
             "BUILD_IMAGE_VERIFY_NOISE": os.urandom(8).hex(), "HOSTNAME": SECOND_HOSTNAME}
    os.environ.update(noise)
    time.tzset()
    varied.append(("umask", f"{old_umask:03o} -> {SECOND_UMASK:03o}"))
    varied.append(("environment", ", ".join(f"{k}" for k in sorted(noise)) + " set"))
    try:
        yield
    finally:
        os.umask(old_umask)
        os.environ.clear()
        os.environ.update(saved_env)
        time.tzset()
