"""docker build's standard-input forms, turned into a context directory and a Dockerfile path:

    build-image -  < context.tar[.gz|.bz2|.xz]   the context is the tar (its Dockerfile at the root, or -f inside it)
    build-image -  < Dockerfile                  no context at all: the Dockerfile alone
    build-image -f - DIR < Dockerfile            the Dockerfile from stdin, the context a directory

stdin is spooled to a scratch directory first (it is read once, and a tar must be seekable to be
checked); what is neither a tar nor compressed is taken as Dockerfile text, as docker does. Tar
members are extracted with tarfile's "tar" filter: no absolute paths, nothing outside the directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import BinaryIO, Iterator

from builder.errors import BuildError

STDIN = "-"


@contextlib.contextmanager
def stdin_forms(context: str, dockerfile: str | None, stdin: BinaryIO) -> Iterator[tuple[str, str | None]]:
    """(context directory, Dockerfile path) for CONTEXT and DOCKERFILE, either of which may be `-`;
    any scratch files are removed when the block ends."""
    if context != STDIN and dockerfile != STDIN:
        yield context, dockerfile
        return
    if context == STDIN and dockerfile == STDIN:
        raise BuildError("invalid argument: can't use stdin for both build context and dockerfile")
    scratch = tempfile.mkdtemp(prefix="build-image-stdin-")
    try:
        spooled = os.path.join(scratch, "stdin")
        with open(spooled, "wb") as out:
            shutil.copyfileobj(stdin, out, 1 << 20)
        if dockerfile == STDIN:
            yield context, as_dockerfile(spooled, scratch)
            return
        context_dir = os.path.join(scratch, "context")
        os.mkdir(context_dir)
        if extract_tar(spooled, context_dir):
            yield context_dir, os.path.join(context_dir, dockerfile) if dockerfile else None
        else:
            yield context_dir, as_dockerfile(spooled, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def as_dockerfile(spooled: str, scratch: str) -> str:
    path = os.path.join(scratch, "dockerfile", "Dockerfile")
    os.mkdir(os.path.dirname(path))
    os.rename(spooled, path)
    return path


def extract_tar(spooled: str, dest: str, what: str = "stdin") -> bool:
    """Extract SPOOLED into DEST if it is a tar (compressed or not); False if it is plain text."""
    import tarfile  # here: a build from a directory never needs tarfile nor the codecs

    from builder.plumbing import compression

    kind = compression.sniff_file(spooled)
    plain = spooled
    if kind:
        plain = spooled + ".tar"
        try:
            with open(spooled, "rb") as source, compression.decompressed(source) as stream, \
                    open(plain, "wb") as out:
                shutil.copyfileobj(stream, out, 1 << 20)
        except (compression.CorruptStream, OSError, EOFError) as e:
            raise BuildError(f"unable to prepare context: the {kind} data on {what} does not decompress: {e}") from None
    if not tarfile.is_tarfile(plain):
        if kind:
            raise BuildError(f"unable to prepare context: the {kind} data on {what} is not a tar archive")
        return False
    try:
        with tarfile.open(plain) as tar:
            tar.extractall(dest, filter="tar")
    except (tarfile.TarError, OSError) as e:
        raise BuildError(f"unable to prepare context: the tar on {what} cannot be extracted: {e}") from None
    return True
