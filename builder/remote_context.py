"""Contexts named by URL, as docker build takes them, fetched into a scratch directory:

    https://HOST/ctx.tar.gz          a tar (plain, gzip, bzip2, xz): the context
    https://HOST/Dockerfile          anything else: a Dockerfile with no context
    https://HOST/REPO.git#REF:DIR    a git repository (also git://, ssh://, git@HOST:REPO, file://)

Git URLs are fetched with the git CLI, only REF (a branch, a tag or a commit; the remote's HEAD
when none is given) at depth 1, and DIR inside it is the context. The `.git` directory is removed
unless the build argument BUILDKIT_CONTEXT_KEEP_GIT_DIR=1 is set, as in BuildKit. Submodules are
not fetched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

from builder.errors import BuildError

_GIT_SCHEMES = ("git://", "ssh://", "git@", "file://")
_HTTP_TIMEOUT = 60


def is_git(context: str) -> bool:
    base = context.partition("#")[0]
    return context.startswith(_GIT_SCHEMES) or (context.startswith(("http://", "https://"))
                                               and base.rstrip("/").endswith(".git"))


def is_remote(context: str) -> bool:
    return is_git(context) or context.startswith(("http://", "https://"))


@contextlib.contextmanager
def remote_context(url: str, keep_git_dir: bool = False) -> Iterator[tuple[str, str | None]]:
    """(context directory, Dockerfile path or None) for URL, removed when the block ends."""
    scratch = tempfile.mkdtemp(prefix="build-image-remote-")
    try:
        if is_git(url):
            yield _git_checkout(url, scratch, keep_git_dir), None
        else:
            yield _http_context(url, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _http_context(url: str, scratch: str) -> tuple[str, str | None]:
    import urllib.error
    import urllib.request

    from builder.stdin_context import as_dockerfile, extract_tar

    spooled = os.path.join(scratch, "download")
    try:
        with urllib.request.urlopen(url, timeout=_HTTP_TIMEOUT) as response, open(spooled, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    except urllib.error.HTTPError as e:
        raise BuildError(f"unable to prepare context: {url}: {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise BuildError(f"unable to prepare context: {url}: {getattr(e, 'reason', None) or e}") from None
    context_dir = os.path.join(scratch, "context")
    os.mkdir(context_dir)
    if extract_tar(spooled, context_dir, url):
        return context_dir, None
    return context_dir, as_dockerfile(spooled, scratch)


def _git_checkout(url: str, scratch: str, keep_git_dir: bool) -> str:
    import subprocess

    base, _, fragment = url.partition("#")
    ref, _, subdir = fragment.partition(":")
    repo = os.path.join(scratch, "repo")
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true"}

    def git(*args: str) -> None:
        try:
            subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=600)
        except FileNotFoundError:
            raise BuildError("unable to prepare context: a git URL needs the git command") from None
        except subprocess.CalledProcessError as e:
            detail = (e.stderr.strip().splitlines() or [f"exit code {e.returncode}"])[-1]
            raise BuildError(f"failed to fetch {base}{'#' + ref if ref else ''}: {detail}") from None

    os.mkdir(repo)
    repo = os.path.realpath(repo)
    git("init", "-q")
    git("remote", "add", "origin", base)
    git("fetch", "-q", "--depth", "1", "--no-tags", "origin", ref or "HEAD")
    git("checkout", "-q", "FETCH_HEAD")
    if not keep_git_dir:
        shutil.rmtree(os.path.join(repo, ".git"))
    context_dir = os.path.realpath(os.path.join(repo, subdir.strip("/")))
    if not (context_dir == repo or context_dir.startswith(repo + os.sep)) or not os.path.isdir(context_dir):
        raise BuildError(f"unable to prepare context: {subdir!r} is not a directory in {base}")
    return context_dir
