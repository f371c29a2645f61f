"""`build-image parse [-f FILE]`: a Dockerfile's instructions as JSON, for tooling and tests."""

from __future__ import annotations

import json
import os
import sys

from builder.cli.runner import run_command
from builder.cli.usage import UsageParser
from builder.errors import BuildError


def cmd_parse(argv: list[str]) -> int:
    p = UsageParser(prog="build-image parse", description="Print a Dockerfile's instructions as JSON.")
    p.add_argument("-f", "--file", default="Dockerfile", help="the Dockerfile ('-' for standard input)")
    p.add_argument("--debug", action="store_true")
    p.add_argument("--root", help="accepted as by every command; parsing needs no store")
    ns = p.parse_args(argv)

    def run() -> int:
        from builder.grammar import dockerfile_to_json, parse_dockerfile
        from builder.pipeline import decode_dockerfile

        if ns.file == "-":
            name = "Dockerfile"
            text = decode_dockerfile(sys.stdin.buffer.read(), name)
        else:
            try:
                with open(ns.file, "rb") as f:
                    data = f.read()
            except OSError as error:
                raise BuildError(f"failed to read dockerfile: {error.strerror}: {ns.file}") from None
            name = os.path.basename(ns.file)
            text = decode_dockerfile(data, name)
        json.dump(dockerfile_to_json(parse_dockerfile(text, name)), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0

    return run_command(run, ns.debug)
