"""The conformance cases on disk, and what building one needs besides its Dockerfile.

    cases/<name>/Dockerfile      built FROM ${BASE} (the busybox test image) or FROM scratch
    cases/<name>/...             its build context
    cases/<name>/build.json      optional: {"build_args": {"K": "V"}, "target": "stage",
                                            "secrets": {"id": "value"}, "expect_error": true}
    cases/<name>/expected.json   {"source": "buildkit"|"reference", "engine": ..., "note": ...,
                                  "summary": {...}, "current_buildkit": {...}}
                                 or, for an "expect_error" case, {..., "error": "BuildKit's error line"}
    known_differences.json       case -> why build-image's summary differs from BuildKit's today

`summary` is what the engine built (BuildKit 0.8 here) or, for "reference", what the Dockerfile reference
says. `current_buildkit`, when present, replaces whole summary fields where today's BuildKit
(frontend/dockerfile/dockerfile2llb) is known to write something else than 0.8 did, e.g. history strings;
its "note" says what changed. The test compares against the summary with those fields replaced.
An "expect_error" case records a Dockerfile BuildKit refuses: build-image must refuse it too.

`{{REGISTRY}}` in a case's Dockerfile stands for the test registry's host:port (an image reference
BuildKit cannot take from a build argument, e.g. `COPY --from={{REGISTRY}}/busybox:latest`).

Both engines build a staged copy of the case folder, so the checkout's owners and umask cannot leak in:
files and directories are owned by 1234:1234 (COPY must reset that to 0:0) with modes 0644/0755.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field

from tests.conformance.summary import Entry, flatten, read_image
from tests.support.baseimage import write_busybox_oci_layout

HERE = os.path.dirname(os.path.abspath(__file__))
CASES_DIR = os.path.join(HERE, "cases")
KNOWN_DIFFERENCES = os.path.join(HERE, "known_differences.json")
CONTEXT_OWNER = 1234
_NOT_CONTEXT = {"expected.json", "build.json"}
REGISTRY_PLACEHOLDER = "{{REGISTRY}}"


@dataclass(frozen=True)
class Case:
    name: str
    dir: str
    build_args: dict[str, str] = field(default_factory=dict)
    target: str = ""
    secrets: dict[str, str] = field(default_factory=dict)
    expect_error: bool = False

    @property
    def expected_path(self) -> str:
        return os.path.join(self.dir, "expected.json")

    def expected(self) -> dict:
        with open(self.expected_path) as f:
            return json.load(f)

    def expected_summary(self) -> dict:
        """The summary to match: the recorded one with today's BuildKit's fields put over it."""
        expected = self.expected()
        return {**expected["summary"], **expected.get("current_buildkit", {})}

    def build_flags(self) -> list[str]:
        """The `docker build` / `build-image` flags beyond BASE, the output and the context."""
        flags = [f for key, value in sorted(self.build_args.items()) for f in ("--build-arg", f"{key}={value}")]
        return flags + (["--target", self.target] if self.target else [])

    def secret_flags(self, directory: str) -> list[str]:
        """Write each secret to a file in DIRECTORY (outside the context: a secret must reach the build
        only through --secret) and return the `--secret id=ID,src=FILE` flags both engines take."""
        flags = []
        for secret_id, value in sorted(self.secrets.items()):
            path = os.path.join(directory, f"secret-{secret_id}")
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
                f.write(value)
            flags += ["--secret", f"id={secret_id},src={path}"]
        return flags


def load_case(name: str) -> Case:
    path = os.path.join(CASES_DIR, name)
    options = {}
    if os.path.exists(os.path.join(path, "build.json")):
        with open(os.path.join(path, "build.json")) as f:
            options = json.load(f)
    return Case(name, path, dict(options.get("build_args", {})), options.get("target", ""),
                dict(options.get("secrets", {})), bool(options.get("expect_error", False)))


def case_names() -> list[str]:
    return sorted(n for n in os.listdir(CASES_DIR) if os.path.isfile(os.path.join(CASES_DIR, n, "Dockerfile")))


def known_differences() -> dict[str, str]:
    with open(KNOWN_DIFFERENCES) as f:
        return json.load(f)


def stage_context(case: Case, dest: str, registry_host: str) -> str:
    """Copy CASE's context into DEST (which must not exist) with normalized owners and modes, and
    {{REGISTRY}} in its Dockerfile replaced by REGISTRY_HOST."""
    shutil.copytree(case.dir, dest, symlinks=True, ignore=lambda d, names: _NOT_CONTEXT & set(names)
                    if d == case.dir else set())
    dockerfile = os.path.join(dest, "Dockerfile")
    with open(dockerfile) as f:
        text = f.read()
    if REGISTRY_PLACEHOLDER in text:
        with open(dockerfile, "w") as f:
            f.write(text.replace(REGISTRY_PLACEHOLDER, registry_host))
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            os.lchown(path, CONTEXT_OWNER, CONTEXT_OWNER)
            if os.path.islink(path):
                continue
            executable = os.path.isdir(path) or os.stat(path).st_mode & 0o100
            os.chmod(path, 0o755 if executable else 0o644)
    os.chown(dest, CONTEXT_OWNER, CONTEXT_OWNER)
    return dest


def busybox_base_tree() -> dict[str, Entry]:
    """The flattened tree of the busybox image every case builds on (tests.support makes it the same way
    each time), so that summaries leave out the base files a build did not change."""
    with tempfile.TemporaryDirectory(prefix="conformance-base-") as layout:
        return flatten(read_image(write_busybox_oci_layout(layout)))
