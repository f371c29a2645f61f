"""LLB-like vertices: what a build step does, independent of how or whether it runs.

A `Vertex` is an op plus its inputs. Its digest covers the op's canonical encoding and the
inputs' digests, so identical steps anywhere in a build are one vertex. Display names and
source lines are kept out of the digest (they live in the plan, not here).
"""

from __future__ import annotations

import hashlib
from functools import cached_property

from builder.plumbing.canonical import canonical_json
from builder.plumbing.records import asdict, dataclass, field


class Op:
    """Base of every op. `kind` names it in the canonical encoding."""

    kind = "op"

    def definition(self) -> dict:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class ImageSource(Op):
    """A base image by reference; resolved to a manifest digest at solve time."""

    kind = "source.image"
    ref: str
    platform: str = "linux/amd64"


@dataclass(frozen=True)
class LocalSource(Op):
    """The build context (or another local directory), filtered by .dockerignore patterns.

    Its content is not part of the digest: file ops that read it key on checksums of what they read.
    """

    kind = "source.local"
    name: str = "context"
    excludes: tuple[str, ...] = ()


@dataclass(frozen=True)
class BindMountSpec:
    """RUN --mount=type=bind: `path` of input `source` at `target`. Writes to a read-write bind
    are discarded after the step; nothing under `target` is part of the layer."""

    target: str
    source: int                     # index into the vertex inputs (the input may be None: empty)
    path: str = "/"
    readonly: bool = True


@dataclass(frozen=True)
class CacheMountSpec:
    """RUN --mount=type=cache: a directory kept in the store across builds, never in a layer.

    A new cache directory starts as `path` of input `source` (None: empty) with `mode`,
    `uid` and `gid` on its root."""

    target: str
    id: str
    sharing: str = "shared"         # shared | private | locked
    source: int | None = None
    path: str = "/"
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    readonly: bool = False


@dataclass(frozen=True)
class TmpfsMountSpec:
    target: str
    size: int = 0                   # bytes; 0 = the kernel's default (half of RAM)


@dataclass(frozen=True)
class SecretMountSpec:
    """RUN --mount=type=secret: the value of secret `id` as a file at `target` and/or in the
    environment variable `env`. Only the id is here: values never reach a digest or a key."""

    id: str
    target: str = ""                # "" with `env` set: environment only
    env: str = ""
    required: bool = False
    mode: int = 0o400
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class SSHMountSpec:
    """RUN --mount=type=ssh: the agent socket forwarded as `id` at `target`."""

    id: str = "default"
    target: str = "/run/buildkit/ssh_agent.0"
    required: bool = False
    mode: int = 0o600
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class ScriptMountSpec:
    """A RUN heredoc that starts with #!, mounted read-only as an executable file at `target`
    (/dev/pipes/<name>) and run from there, as BuildKit does. Its text is part of the digest."""

    target: str
    data: str
    mode: int = 0o755


MountSpec = BindMountSpec | CacheMountSpec | TmpfsMountSpec | SecretMountSpec | SSHMountSpec | ScriptMountSpec


@dataclass(frozen=True)
class HttpSource(Op):
    """ADD <url>: one file, fetched when the build is keyed; its key is the content digest.

    `filename` is what the file is called in the source tree (BuildKit: the URL path's base name,
    or `__unnamed__`); `checksum` (sha256:...) pins the content."""

    kind = "source.http"
    url: str
    filename: str
    checksum: str = ""


@dataclass(frozen=True)
class InlineFile(Op):
    """A heredoc of COPY/ADD as a source tree of one file (mode 0644) named `name`."""

    kind = "source.inline"
    name: str
    data: str


@dataclass(frozen=True)
class MergeOp(Op):
    """The inputs' layers stacked in order, adding none (COPY --link puts its independent layer on
    the stage this way, as BuildKit's MergeOp does)."""

    kind = "merge"


@dataclass(frozen=True)
class ExecOp(Op):
    """Run a process over input 0 (the root filesystem); its changes become one layer.

    Mount sources (other stages, images, the context) are further inputs, named by index."""

    kind = "exec"
    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str = "/"
    user: str = ""
    network: str = "default"        # default (own network with NAT), none, host
    hostname: str = "buildkitsandbox"
    mounts: tuple[MountSpec, ...] = ()
    extra_hosts: tuple[tuple[str, str], ...] = ()   # --add-host (name, ip), as BuildKit's ExtraHosts
    shm_size: int = 0                               # --shm-size in bytes; 0 = the executor's default
    ulimits: tuple[tuple[str, int, int], ...] = ()  # --ulimit (name, soft, hard), as BuildKit's Ulimit

    def definition(self) -> dict:
        body = super().definition()
        for name in ("shm_size", "ulimits"):  # left out when unset: digests of other builds stay the same
            if not body[name]:
                del body[name]
        # asdict drops the mount's class; two mount types with equal fields must not collide.
        body["mounts"] = [{"type": type(m).__name__, **asdict(m)} for m in self.mounts]
        return body


@dataclass(frozen=True)
class CopyAction:
    """Copy paths from input `source` into input 0 at `dest`, BuildKit's COPY rules."""

    source: int                     # index into the vertex inputs
    paths: tuple[str, ...]          # source paths (may hold wildcards), relative to the source root
    dest: str                       # absolute, or ending in '/' for "into this directory"
    chown: str = ""                 # user[:group], resolved in the destination image
    chmod: str = ""                 # octal, or symbolic (u+x,go-w) applied to each copied mode
    extract_archives: bool = False  # ADD: local tar archives are unpacked
    exclude: tuple[str, ...] = ()   # patternmatcher patterns, relative to each copied source
    parents: bool = False           # COPY --parents: keep the path below the "/./" pivot (or all of it)


@dataclass(frozen=True)
class MkdirAction:
    path: str
    mode: int = 0o755
    chown: str = ""


@dataclass(frozen=True)
class FileOp(Op):
    """Filesystem actions applied to input 0; the result is input 0 plus one layer."""

    kind = "file"
    actions: tuple[CopyAction | MkdirAction, ...]

    def definition(self) -> dict:
        return {
            "kind": self.kind,
            "actions": [{"type": type(a).__name__, **asdict(a)} for a in self.actions],
        }


@dataclass(frozen=True)
class Vertex:
    op: Op
    inputs: tuple["Vertex | None", ...] = field(default=())

    @cached_property
    def digest(self) -> str:
        body = {
            "op": self.op.definition(),
            "inputs": [v.digest if v is not None else None for v in self.inputs],
        }
        return "sha256:" + hashlib.sha256(canonical_json(body)).hexdigest()

    def __hash__(self) -> int:
        return hash(self.digest)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vertex) and other.digest == self.digest
