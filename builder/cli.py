"""The `build-image` command: argument parsing and output only; the work happens in the library.

    build-image [build] [OPTIONS] CONTEXT      build an image (docker build's flags)
    build-image parse [-f FILE]                print a Dockerfile's instructions as JSON
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

from builder.errors import BuildError, ExecutionError

EXIT_ERROR = 1


# -- progress output ---------------------------------------------------------------------------

class PlainProgress:
    """BuildKit's plain progress format: `#N name`, `#N 0.123 output`, `#N DONE 0.3s` / `#N CACHED`."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.numbers: dict[str, int] = {}
        self.started: dict[str, float] = {}
        self.partial: dict[str, bytes] = {}
        self.lock = threading.Lock()

    def _number(self, step_id: str) -> int:
        if step_id not in self.numbers:
            self.numbers[step_id] = len(self.numbers) + 1
        return self.numbers[step_id]

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def __call__(self, event) -> None:
        from builder.solver import progress as ev

        with self.lock:
            n = self._number(event.id)
            if isinstance(event, ev.Started):
                self.started[event.id] = time.monotonic()
                self._write(f"\n#{n} {event.name}\n")
            elif isinstance(event, ev.Output):
                data = self.partial.pop(event.id, b"") + event.data
                *lines, rest = data.split(b"\n")
                elapsed = time.monotonic() - self.started.get(event.id, time.monotonic())
                for line in lines:
                    self._write(f"#{n} {elapsed:.3f} {line.decode(errors='replace')}\n")
                if rest:
                    self.partial[event.id] = rest
            elif isinstance(event, ev.Log):
                self._write(f"#{n} {event.text}\n")
            elif isinstance(event, ev.Finished):
                rest = self.partial.pop(event.id, b"")
                elapsed = time.monotonic() - self.started.get(event.id, time.monotonic())
                if rest:
                    self._write(f"#{n} {elapsed:.3f} {rest.decode(errors='replace')}\n")
                if event.cached:
                    self._write(f"#{n} CACHED\n")
                elif event.error:
                    self._write(f"#{n} ERROR: {event.error}\n")
                else:
                    self._write(f"#{n} DONE {elapsed:.1f}s\n")


# -- commands ----------------------------------------------------------------------------------

def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="build-image", description="Build an OCI image from a Dockerfile.")
    p.add_argument("context", metavar="CONTEXT", help="build context directory")
    p.add_argument("-f", "--file", dest="dockerfile", help="name of the Dockerfile (default: CONTEXT/Dockerfile)")
    p.add_argument("-t", "--tag", action="append", default=[], help="name and optionally a tag (name:tag)")
    p.add_argument("--build-arg", action="append", default=[], metavar="KEY[=VALUE]", help="set a build-time variable")
    p.add_argument("--target", help="build this stage")
    p.add_argument("--no-cache", action="store_true", help="do not use the cache when building")
    p.add_argument("--pull", action="store_true", help="always look up base images in their registry")
    p.add_argument("-o", "--output", action="append", default=[],
                   help="output destination: type=oci|docker,dest=FILE.tar | type=local,dest=DIR | PATH")
    p.add_argument("--iidfile", help="write the image ID to this file")
    p.add_argument("--progress", choices=("auto", "plain", "tty", "quiet"), default="auto")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image ID")
    p.add_argument("--jobs", type=int, default=None, help="steps run at once (default: number of cores)")
    p.add_argument("--platform", default="linux/amd64", help="target platform (default linux/amd64)")
    p.add_argument("--root", help="store root (default: $BUILD_IMAGE_ROOT or ~/.local/share/build-image)")
    p.add_argument("--insecure-registry", action="append", default=[], help="use plain HTTP for this registry")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _build_args(values: list[str]) -> dict[str, str]:
    args = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:  # `--build-arg KEY` takes the value from the environment, as docker does
            if key not in os.environ:
                continue
            value = os.environ[key]
        args[key] = value
    return args


def cmd_build(argv: list[str]) -> int:
    from builder.build import BuildOptions, OutputSpec, build

    ns = _build_parser().parse_args(argv)
    quiet = ns.quiet or ns.progress == "quiet"
    progress = (lambda event: None) if quiet else PlainProgress()
    options = BuildOptions(
        context=ns.context,
        dockerfile=ns.dockerfile,
        tags=tuple(ns.tag),
        build_args=_build_args(ns.build_arg),
        target=ns.target,
        no_cache=ns.no_cache,
        pull=ns.pull,
        outputs=tuple(OutputSpec.parse(o) for o in ns.output),
        iidfile=ns.iidfile,
        jobs=ns.jobs,
        root=ns.root,
        platform=ns.platform,
        insecure_registries=tuple(ns.insecure_registry),
    )
    return _run(lambda: _report_build(build(options, progress), quiet), ns.debug)


def _report_build(result, quiet: bool) -> int:
    for warning in result.warnings:
        print(warning, file=sys.stderr)
    if quiet:
        print(result.image_id)
    return 0


def cmd_parse(argv: list[str]) -> int:
    import json

    p = argparse.ArgumentParser(prog="build-image parse", description="Print a Dockerfile's instructions as JSON.")
    p.add_argument("-f", "--file", default="Dockerfile", help="the Dockerfile ('-' for standard input)")
    p.add_argument("--debug", action="store_true")
    ns = p.parse_args(argv)

    def run() -> int:
        from builder.grammar import dockerfile_to_json, parse_dockerfile

        if ns.file == "-":
            text, name = sys.stdin.read(), "Dockerfile"
        else:
            try:
                with open(ns.file, encoding="utf-8") as f:
                    text = f.read()
            except OSError as error:
                raise BuildError(f"failed to read dockerfile: {error.strerror}: {ns.file}") from None
            name = os.path.basename(ns.file)
        json.dump(dockerfile_to_json(parse_dockerfile(text, name)), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0

    return _run(run, ns.debug)


def _interrupt(signum, frame) -> None:
    """SIGTERM (CI timeouts, `kill`) cleans up the same way Ctrl-C does."""
    raise KeyboardInterrupt


def _run(fn, debug: bool) -> int:
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
        print(f"ERROR: failed to solve: {error}", file=sys.stderr)
        return EXIT_ERROR
    except BuildError as error:
        if debug:
            raise
        print(f"ERROR: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("ERROR: interrupted", file=sys.stderr)
        return 130


COMMANDS = {"build": cmd_build, "parse": cmd_parse}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    return cmd_build(argv)


if __name__ == "__main__":
    sys.exit(main())
