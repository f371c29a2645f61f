"""Runs a command the way every build-image command ends: errors as one line and an exit code."""

from __future__ import annotations

import signal
import sys

from builder.errors import BuildError, ExecutionError

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def _interrupt(signum, frame) -> None:
    """SIGTERM (CI timeouts, `kill`) cleans up the same way Ctrl-C does."""
    raise KeyboardInterrupt


def silence_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the interpreter's last flush cannot fail."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _print_source(error: BuildError) -> None:
    """BuildKit's excerpt of the Dockerfile: `Dockerfile:LINE`, then the lines with `>>>` marking the step."""
    if not error.source:
        return
    where, *lines = error.source
    rule = "-" * 20
    print("\n".join((where, rule, *lines, rule)), file=sys.stderr)


def run_command(fn, debug: bool) -> int:
    """Runs a command; a BuildError becomes one line on stderr and exit code 1."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return fn()
    except ExecutionError as error:
        if debug:
            raise
        if error.last_lines:
            print("------", file=sys.stderr)
            print(f" > {error.step}:", file=sys.stderr)
            for line in error.last_lines:
                print(f"   {line}", file=sys.stderr)
            print("------", file=sys.stderr)
        _print_source(error)
        print(f"ERROR: failed to solve: {error}", file=sys.stderr)
        return EXIT_ERROR
    except BuildError as error:
        if debug:
            raise
        if error.source and error.step:
            print(f"------\n > {error.step}:\n------", file=sys.stderr)
        _print_source(error)
        print(f"ERROR: {error}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # `build-image parse | head`: the reader has what it wanted
        silence_stdout()
        return 0
    except OSError as error:  # a file the user named: a missing directory, a full disk, no permission
        if debug:
            raise
        where = f": {error.filename}" if error.filename else ""
        print(f"ERROR: {error.strerror or error}{where}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("ERROR: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
