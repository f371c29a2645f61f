"""LLB-like vertices: what a build step does, independent of how or whether it runs.

A `Vertex` is an op plus its inputs. Its digest covers the op's canonical encoding and the
inputs' digests, so identical steps anywhere in a build are one vertex. Display names and
source lines are kept out of the digest (they live in the plan, not here).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from functools import cached_property


def canonical_json(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


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
class ExecOp(Op):
    """Run a process over input 0 (the root filesystem); its changes become one layer."""

    kind = "exec"
    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str = "/"
    user: str = ""
    network: str = "none"
    hostname: str = "buildkitsandbox"


@dataclass(frozen=True)
class CopyAction:
    """Copy paths from input `source` into input 0 at `dest`, BuildKit's COPY rules."""

    source: int                     # index into the vertex inputs
    paths: tuple[str, ...]          # source paths (may hold wildcards), relative to the source root
    dest: str                       # absolute, or ending in '/' for "into this directory"
    chown: str = ""                 # user[:group], resolved in the destination image
    chmod: str = ""                 # octal
    extract_archives: bool = False  # ADD: local tar archives are unpacked
    exclude: tuple[str, ...] = ()


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

    @property
    def adds_layer(self) -> bool:
        return isinstance(self.op, (ExecOp, FileOp))
