"""Image references, normalised the way Docker does it (distribution/reference).

    busybox                      -> docker.io/library/busybox:latest
    ghcr.io/o/r@sha256:<hex>     -> ghcr.io/o/r@sha256:<hex>        (no tag is invented)
    localhost:5000/a:t           -> localhost:5000/a:t

The first path component is a registry host only if it looks like one: it contains a `.` or a `:`,
is `localhost`, or has upper-case letters (repository components never do). Otherwise the name is
on Docker Hub, and a single-component Hub name lives under `library/`.
"""

from __future__ import annotations

import re

from builder.errors import BuildError
from builder.plumbing.records import dataclass, replace

DOCKER_HUB = "docker.io"
_LEGACY_HUB = "index.docker.io"
DEFAULT_TAG = "latest"
_MAX_NAME = 255

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_DOMAIN_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(rf"(?:{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_SHA256_RE = re.compile(r"sha256:[0-9a-f]{64}")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")


class InvalidReference(BuildError):
    """An image name that Docker would refuse."""


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str | None
    digest: str | None

    def __str__(self) -> str:
        return self.name + self._suffix()

    @property
    def name(self) -> str:
        """registry/repository, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def familiar(self) -> str:
        """The short form Docker prints: Hub names lose `docker.io/` and `library/`."""
        if self.registry != DOCKER_HUB:
            return str(self)
        repo = self.repository
        if repo.startswith("library/") and repo.count("/") == 1:
            repo = repo[len("library/"):]
        return repo + self._suffix()

    def with_digest(self, digest: str) -> "Reference":
        """The same image pinned to DIGEST (the tag is kept for display)."""
        if not _SHA256_RE.fullmatch(digest):
            raise InvalidReference(f"invalid digest {digest!r}: expected sha256:<64 hex digits>")
        return replace(self, digest=digest)

    def _suffix(self) -> str:
        return (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


def parse_reference(name: str) -> Reference:
    """Parse and normalise NAME; raises InvalidReference with the reason."""
    if not name:
        raise InvalidReference("invalid reference format: empty image name")
    if name != name.strip():
        raise InvalidReference(f"invalid reference format: {name!r} has surrounding whitespace")

    remainder, at, digest = name.partition("@")
    if at:
        if not _DIGEST_RE.fullmatch(digest):
            raise InvalidReference(f"invalid reference format: bad digest in {name!r}")
        if digest.startswith("sha256:") and not _SHA256_RE.fullmatch(digest):
            raise InvalidReference(
                f"invalid reference format: {name!r}: a sha256 digest is 64 lower-case hex digits")
    else:
        digest = None

    # A tag is a ':' after the last '/'; a ':' before it belongs to a registry port.
    tag: str | None = None
    colon = remainder.rfind(":")
    if colon > remainder.rfind("/"):
        remainder, tag = remainder[:colon], remainder[colon + 1:]
        if not _TAG_RE.fullmatch(tag):
            raise InvalidReference(f"invalid reference format: bad tag {tag!r} in {name!r}")

    registry, repository = _split_registry(remainder, name)
    if len(registry) + 1 + len(repository) > _MAX_NAME:
        raise InvalidReference(f"invalid reference format: repository name {name!r} is longer than {_MAX_NAME}")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry=registry, repository=repository, tag=tag, digest=digest)


def _split_registry(remainder: str, original: str) -> tuple[str, str]:
    first, slash, rest = remainder.partition("/")
    is_host = slash and (any(c in first for c in ".:") or first == "localhost" or first.lower() != first)
    if is_host:
        registry, repository = first, rest
        if not _DOMAIN_RE.fullmatch(registry):
            raise InvalidReference(f"invalid reference format: bad registry host {registry!r} in {original!r}")
        if registry == _LEGACY_HUB:
            registry = DOCKER_HUB
    else:
        registry, repository = DOCKER_HUB, remainder
    if registry == DOCKER_HUB and "/" not in repository:
        repository = "library/" + repository

    if repository.lower() != repository and _PATH_RE.fullmatch(repository.lower()):
        raise InvalidReference(f"invalid reference format: repository name {original!r} must be lowercase")
    if not _PATH_RE.fullmatch(repository):
        raise InvalidReference(f"invalid reference format: {original!r} is not a valid repository name")
    if _HEX64_RE.fullmatch(original):
        raise InvalidReference(
            f"invalid repository name {original!r}: cannot be a 64-character hexadecimal string "
            "(did you mean an image ID?)")
    return registry, repository
