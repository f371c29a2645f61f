"""The `build-image` command line: argument parsing and output only; the work is in the library.

    build-image [build] [OPTIONS] CONTEXT      build an image (docker build's flags)
    build-image parse [-f FILE]                print a Dockerfile's instructions as JSON
"""

from __future__ import annotations

import sys


def _commands() -> dict:
    from builder.cli import build, parse

    return {"build": build.cmd_build, "parse": parse.cmd_parse}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = _commands()
    if argv and argv[0] in commands:
        return commands[argv[0]](argv[1:])
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    return commands["build"](argv)
