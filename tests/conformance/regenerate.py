"""Rebuild every conformance case with BuildKit (Debian's Docker 20.10) and write its expected.json.

    python3 -m tests.conformance.regenerate [CASE ...]     # as root; all cases by default

It starts a throw-away registry holding the busybox test image and a private dockerd (own data-root,
exec-root and socket, stopped and removed afterwards), builds each case with
`DOCKER_BUILDKIT=1 docker build --network=none --build-arg BASE=... [--secret id=ID,src=FILE]`,
`docker save`s the image and writes its summary (or, for a case whose build.json says "expect_error",
BuildKit's error line). Cases whose expected.json says `"source": "reference"` (features BuildKit 0.8
lacks) are written by hand from the Dockerfile reference and are never touched; a "note" and
"current_buildkit" fields (where today's BuildKit writes something else than 0.8) already in a file
are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from bench.dockerd import PrivateDockerd
from tests.conformance.cases import Case, busybox_base_tree, case_names, load_case, stage_context
from tests.conformance.summary import read_image, summarize
from tests.support.baseimage import push_busybox_image
from tests.support.registry import Registry

_BUILD_TIMEOUT = 300


class CaseFailed(RuntimeError):
    pass


class DockerFailed(CaseFailed):
    def __init__(self, message: str, error_line: str):
        super().__init__(message)
        self.error_line = error_line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", help="case folder names (default: all)")
    args = parser.parse_args(argv)
    names = args.cases or case_names()
    cases = [load_case(name) for name in names]
    todo = [case for case in cases if _source(case) != "reference"]
    for case in cases:
        if case not in todo:
            print(f"{case.name}: written from the reference, left as it is")

    base = busybox_base_tree()
    failed = []
    with Registry() as registry, PrivateDockerd() as daemon:
        push_busybox_image(registry.host)
        engine = f"Docker {daemon.server_version()} (Debian docker.io, its built-in BuildKit 0.8)"
        for case in todo:
            try:
                outcome = _record(daemon, case, registry.host, base)
            except CaseFailed as e:
                failed.append(case.name)
                print(f"{case.name}: FAILED\n{e}", file=sys.stderr)
                continue
            _write_expected(case, engine, outcome)
            print(f"{case.name}: ok")
    if failed:
        print(f"{len(failed)} case(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _record(daemon: PrivateDockerd, case: Case, registry_host: str, base: dict) -> dict:
    """{"summary": ...} of the image BuildKit built, or {"error": its last line} for an expect_error
    case (which must then fail to build)."""
    if not case.expect_error:
        return {"summary": _build_and_summarize(daemon, case, registry_host, base)}
    try:
        _build_and_summarize(daemon, case, registry_host, base)
    except DockerFailed as e:
        return {"error": e.error_line.replace(registry_host, "REGISTRY")}
    raise CaseFailed("BuildKit built it, but build.json says expect_error")


def _build_and_summarize(daemon: PrivateDockerd, case: Case, registry_host: str, base: dict) -> dict:
    tag = f"conformance/{case.name}:latest"
    with tempfile.TemporaryDirectory(prefix=f"conformance-{case.name}-") as tmp:
        context = stage_context(case, os.path.join(tmp, "context"), registry_host)
        _docker(daemon, "build", "--network=none", "--progress=plain", "-t", tag,
                "--build-arg", f"BASE={registry_host}/busybox:latest", *case.build_flags(),
                *case.secret_flags(tmp), context)
        archive = os.path.join(tmp, "image.tar")
        _docker(daemon, "save", "-o", archive, tag)
        _docker(daemon, "rmi", tag)
        return summarize(read_image(archive), base, registry_host)


def _docker(daemon: PrivateDockerd, *args: str) -> None:
    result = subprocess.run(daemon.command(*args), env=daemon.env, capture_output=True, text=True,
                            timeout=_BUILD_TIMEOUT, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        lines = (result.stdout + result.stderr).splitlines()
        tail = "\n".join(lines[-25:])
        raise DockerFailed(f"docker {args[0]} exited with {result.returncode}:\n{tail}",
                           next((line for line in reversed(lines) if line.strip()), ""))


def _source(case: Case) -> str:
    if not os.path.exists(case.expected_path):
        return ""
    return case.expected().get("source", "")


def _write_expected(case: Case, engine: str, outcome: dict) -> None:
    """Write OUTCOME (the summary, or the error); a note and current_buildkit fields written by hand
    are carried over."""
    previous = case.expected() if os.path.exists(case.expected_path) else {}
    document = {"source": "buildkit", "engine": engine}
    if previous.get("note"):
        document["note"] = previous["note"]
    document.update(outcome)
    if previous.get("current_buildkit"):
        document["current_buildkit"] = previous["current_buildkit"]
    with open(case.expected_path, "w") as f:
        json.dump(document, f, indent=2, sort_keys=False)
        f.write("\n")


if __name__ == "__main__":
    raise SystemExit(main())
