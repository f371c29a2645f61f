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
    build-image diff [--flatten] [--format json] A B   compare two images (local, archives, layouts,
                                               docker://): config, then files layer by layer
"""

from __future__ import annotations

import sys


# Command name -> module under builder.cli; only the one asked for is imported.
_COMMANDS = {
    "build": "build_command", "parse": "parse", "diff": "diff_command",
    **{name: "images" for name in ("images", "tag", "rmi", "inspect", "history", "save", "load", "import",
                                   "export", "pull", "push", "login", "logout", "prune", "df", "fsck")},
}


def _command(name: str):
    import importlib

    module = importlib.import_module(f"builder.cli.{_COMMANDS[name]}")
    return getattr(module, f"cmd_{name}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _COMMANDS:
        return _command(argv[0])(argv[1:])
    if not argv or argv[0] in ("-h", "--help"):
        # The docstring's first paragraph is for developers; the command list is the usage.
        print("usage:\n" + __doc__.split("\n\n", 1)[1].rstrip(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    return _command("build")(argv)
