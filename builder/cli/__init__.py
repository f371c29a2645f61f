"""The `build-image` command line: argument parsing and output only; the work is in the library.

    build-image [build] [OPTIONS] CONTEXT      build an image (docker build's flags)
    build-image parse [-f FILE]                print a Dockerfile's instructions as JSON
    build-image images [-q] [--digests] [--filter F] [--format F]   list images
    build-image tag SOURCE TARGET              name an image
    build-image rmi [-f] IMAGE...              remove names, and images nothing names
    build-image inspect [-f F] IMAGE...        an image's config and layers as JSON
    build-image history [-q] [--format F] IMAGE   the steps that made an image
    build-image save [-o FILE] [--format docker|oci] IMAGE...   images to a tar archive
    build-image load [-i FILE]                 images from a docker or OCI archive
    build-image import FILE|- [NAME] [-c CHANGE]   a root filesystem tar as an image
    build-image export -o FILE IMAGE           an image's flattened root filesystem as a tar
    build-image pull [-a] NAME / push NAME     to and from registries
    build-image login [-u USER] SERVER / logout SERVER   registry credentials
    build-image prune [-a] [--cache] [-f]      remove dangling images, unused blobs and snapshots
    build-image df                             disk usage of the store
    build-image fsck [--repair]                verify every blob and reference
    build-image image ls|inspect|rm|prune|history|save|load|tag|push|pull|import   docker's `image` forms
    build-image system df|prune                docker's `system` forms
    build-image version | --version            print the version
    build-image completion bash                a bash completion script (`source <(build-image completion bash)`)
    build-image diff [--flatten] [--format json] A B   compare two images (local, archives, layouts,
                                               docker://): config, then files layer by layer
    build-image serve [--listen unix:///PATH|tcp://HOST:PORT] ...   run the build service
    build-image --server ADDR COMMAND ...      run build or an image command on a build server
                                               (default $BUILD_IMAGE_HOST; --tls-ca FILE)
    build-image login-server tcp://HOST:PORT -u USER [--password-stdin] / logout-server ADDR
"""

from __future__ import annotations

import sys


# Command name -> module under builder.cli; only the one asked for is imported.
_COMMANDS = {
    "build": "build_command", "parse": "parse", "completion": "completion", "diff": "diff_command",
    "serve": "serve_command",
    **{name: "images" for name in ("images", "tag", "rmi", "inspect", "history", "save", "load", "import",
                                   "export", "pull", "push", "login", "logout", "prune", "df", "fsck")},
}

# What `--server ADDR` runs on the server (the others stay local: parse, diff, fsck, ...).
_REMOTE_COMMANDS = ("build", "images", "inspect", "history", "tag", "rmi", "push", "pull", "save", "load",
                    "prune", "df", "login", "logout")

# docker's management-command spellings: `image ls` is `images`, `system df` is `df`, ...
_GROUPS = {
    "image": {"ls": "images", "list": "images", "inspect": "inspect", "rm": "rmi", "remove": "rmi",
              "prune": "prune", "history": "history", "save": "save", "load": "load", "tag": "tag",
              "push": "push", "pull": "pull", "import": "import", "build": "build"},
    "system": {"df": "df", "prune": "prune"},
    "builder": {"build": "build", "prune": "prune"},
    "buildx": {"build": "build", "b": "build", "prune": "prune", "du": "df", "version": "version"},
}


def _command(name: str):
    import importlib

    module = importlib.import_module(f"builder.cli.{_COMMANDS[name]}")
    return getattr(module, f"cmd_{name}")


def main(argv: list[str] | None = None) -> int:
    """The console entry point: the command's exit code; a closed stdout (`| head`) is no error."""
    from builder.cli.runner import silence_stdout

    try:
        code = _dispatch(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:
        code = 0
    finally:  # also for argparse's SystemExit (--help, usage errors)
        try:
            sys.stdout.flush()
        except BrokenPipeError:  # `| head`: the reader has what it wanted
            silence_stdout()
    if argv is None and getattr(sys.modules.get("builder.cli.remote"), "finished_thin", False):
        # A thin build through a server left nothing to clean up (no threads, temp files or atexit
        # work): the interpreter's teardown would cost that process ~5 ms more than the server's build.
        import os

        sys.stderr.flush()
        os._exit(code)
    if argv is None and getattr(sys.modules.get("builder.cli.build_command"), "finished_build", False):
        _end_without_teardown(code)
    return code


def _end_without_teardown(code: int) -> None:
    """End the process after a local build as exit would, but without the interpreter's teardown,
    which only frees the build's modules and objects (~20 ms here): what exit does that matters
    runs first (the atexit callbacks: logging's shutdown, weakref finalizers, temp directories),
    and only when no thread that exit would wait for is alive. Every file the build wrote is
    closed by then (with blocks); the standard streams are flushed here."""
    import atexit
    import os
    import threading

    if any(t is not threading.main_thread() and not t.daemon for t in threading.enumerate()):
        return
    try:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        return  # let the ordinary exit report it
    os._exit(code)


def _dispatch(argv: list[str]) -> int:
    try:
        argv, server, tls_ca = _split_server_flags(argv)
    except ValueError as error:
        return _usage_error(str(error))
    if argv and argv[0] in ("login-server", "logout-server"):
        from builder.cli import remote

        return getattr(remote, f"cmd_{argv[0].replace('-', '_')}")(argv[1:], tls_ca)
    return run_local(argv, server, tls_ca)


def run_local(argv: list[str], server: str | None = None, tls_ca: str | None = None) -> int:
    """The command ARGV; through the build server at SERVER when one is given and the command
    is one a server runs (what `build-image serve`'s workers call, with no server)."""
    if argv and argv[0] in _GROUPS:
        group, subcommands = argv[0], _GROUPS[argv[0]]
        if len(argv) < 2 or argv[1] in ("-h", "--help"):
            print(f"usage: build-image {group} COMMAND\n\ncommands: {', '.join(subcommands)}",
                  file=sys.stdout if len(argv) > 1 else sys.stderr)
            return 0 if len(argv) > 1 else _usage_error(f'"build-image {group}" requires a command')
        if argv[1] not in subcommands:
            return _usage_error(f'unknown command "{argv[1]}" for "build-image {group}"')
        argv = [subcommands[argv[1]], *argv[2:]]
    if argv and argv[0] in ("version", "--version", "-v"):
        from builder.version import __version__

        if len(argv) > 1 and argv[0] == "version":
            return _usage_error(f"version takes no arguments, got {' '.join(argv[1:])}")
        print(f"build-image version {__version__}")
        return 0
    if server and argv and argv[0] not in ("-h", "--help") and (argv[0] not in _COMMANDS
                                                                or argv[0] in _REMOTE_COMMANDS):
        from builder.cli import remote

        if argv[0] not in _COMMANDS:
            argv = ["build", *argv]
        if argv[0] == "build":
            return remote.remote_build(server, tls_ca, argv[1:])
        return remote.remote_command(server, tls_ca, argv[0], argv[1:])
    if argv and argv[0] in _COMMANDS:
        return _command(argv[0])(argv[1:])
    if not argv or argv[0] in ("-h", "--help"):
        # The docstring's first paragraph is for developers; the command list is the usage.
        print("usage:\n" + __doc__.split("\n\n", 1)[1].rstrip(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    return _command("build")(argv)


def _split_server_flags(argv: list[str]) -> tuple[list[str], str | None, str | None]:
    """Take the global `--server ADDR` and `--tls-ca FILE` from the front of ARGV (before the
    command); the defaults are $BUILD_IMAGE_HOST and $BUILD_IMAGE_TLS_CA."""
    import os

    server, ca = os.environ.get("BUILD_IMAGE_HOST") or None, os.environ.get("BUILD_IMAGE_TLS_CA") or None
    rest = list(argv)
    while rest and rest[0].split("=", 1)[0] in ("--server", "--tls-ca"):
        flag, eq, value = rest.pop(0).partition("=")
        if not eq:
            if not rest:
                raise ValueError(f"flag needs an argument: {flag}")
            value = rest.pop(0)
        if flag == "--server":
            server = value
        else:
            ca = value
    return rest, server, ca


def _usage_error(message: str) -> int:
    from builder.cli.usage import EXIT_USAGE

    print(f"ERROR: {message}", file=sys.stderr)
    print("See 'build-image --help'.", file=sys.stderr)
    return EXIT_USAGE
