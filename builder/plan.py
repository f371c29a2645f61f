"""The build plan: what the converter (builder.convert) makes of a Dockerfile and the solver
runs, and a memo of plans on disk so that a rebuild of an unchanged Dockerfile skips the parser
and the converter (Lark's import and tables are most of a small build's planning time).

A plan is a pure function of the Dockerfile text, the options in the plan cache's inputs key
(builder.plan_cache.inputs_key: build args, target, platform, RUN options, .dockerignore) and the
base images the converter consulted, by manifest digest. It does not depend on the context's
content: the solver keys COPY steps on checksums of what they read. So a memo entry is used only
when the same key, the same converter code and the same base digests are found again; anything
else plans afresh. Entries are tagged JSON (builder.plumbing.tagged) of known record classes only.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping

from builder.image.config import ImageConfig
from builder.llb import Vertex
from builder.plumbing.files import write_atomically
from builder.plumbing.records import dataclass, field

HISTORY_COMMENT = "buildkit.dockerfile.v0"
MEMO_FORMAT = 1


@dataclass(frozen=True)
class Step:
    """One history entry the build adds, and the vertex that made its layer (if any)."""

    created_by: str
    vertex: Vertex | None
    comment: str = HISTORY_COMMENT


@dataclass
class Stage:
    """A stage being converted: its current filesystem vertex and image config."""

    index: int
    name: str | None
    vertex: Vertex | None
    config: ImageConfig
    steps: list[Step] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)
    base_ref: str | None = None          # normalised base image reference, if FROM an image
    cmd_set: bool = False                # a CMD in this stage stops ENTRYPOINT from clearing it
    declared: list[str] = field(default_factory=list)   # ARG names in declaration order, set or not

    @property
    def display(self) -> str:
        return self.name if self.name is not None else f"stage-{self.index}"


@dataclass(frozen=True)
class BuildPlan:
    """What a build will do: the target stage's final vertex, its image config (without
    diff_ids and history times, which the solver knows) and the steps it adds."""

    target: Stage
    vertices: tuple[Vertex, ...]          # every vertex the target needs, inputs before users
    names: Mapping[str, str]              # vertex digest -> progress name, "[stage 2/5] RUN make"
    context: Vertex                       # the build context source vertex
    unused_build_args: tuple[str, ...]
    stage_of: Mapping[str, tuple[str, ...]] = field(default_factory=dict)   # layer step digest -> its
                                          # stage's names (name, index), for --no-cache-filter
    lines: Mapping[str, tuple[int, int]] = field(default_factory=dict)   # step digest -> its instruction's
                                          # first and last Dockerfile line, for error excerpts
    arg_names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)   # RUN digest -> the names in
                                          # its env that are build args (not ENV), for cache-miss reasons


class PlanMemo:
    """Plans by inputs key, at ROOT/cache/plans/memo/<key>.json. Only a cache, checked on use, so
    written without fsync (builder.plumbing.files)."""

    def __init__(self, cache_root: str):
        self.dir = os.path.join(cache_root, "cache", "plans", "memo")

    def _path(self, key: str) -> str:
        return os.path.join(self.dir, key + ".json")

    def get(self, key: str, base_digest: Callable[[str, str], str | None]) -> BuildPlan | None:
        """The plan remembered for KEY if it still holds: BASE_DIGEST(name, platform) gives each
        base image's manifest digest now (None if it cannot be resolved)."""
        try:
            with open(self._path(key), encoding="utf-8") as f:
                entry = json.load(f)
        except (OSError, ValueError):
            return None
        try:
            if entry.get("format") != MEMO_FORMAT or entry.get("code") != converter_stamp():
                return None
            for name, platform, digest in entry["bases"]:
                if base_digest(name, platform) != digest:
                    return None
            from builder.plumbing import tagged

            plan = tagged.decode(entry["plan"], _record_classes())
        except (KeyError, TypeError, ValueError, AttributeError):
            return None  # damaged or from another version: plan afresh (and overwrite it)
        if not isinstance(plan, BuildPlan) or _final_digest(plan) != entry.get("final"):
            return None
        return plan

    def put(self, key: str, plan: BuildPlan, bases) -> None:
        """Remember PLAN for KEY, made from BASES: (name, platform, manifest digest)."""
        from builder.plumbing import tagged

        try:
            names = {cls: name for name, cls in _record_classes().items()}
            entry = {"format": MEMO_FORMAT, "code": converter_stamp(), "bases": [list(b) for b in bases],
                     "final": _final_digest(plan),
                     "plan": tagged.encode(plan, names)}
            os.makedirs(self.dir, exist_ok=True)
            write_atomically(self._path(key), json.dumps(entry, separators=(",", ":")).encode(), durable=False)
        except (OSError, TypeError):
            pass  # a plan that cannot be remembered is planned again next time


def _final_digest(plan: BuildPlan) -> str | None:
    """The target's last vertex: it covers every op and input it needs (what the memo checks the
    decoded plan against)."""
    return plan.target.vertex.digest if plan.target.vertex is not None else None


def _record_classes() -> dict[str, type]:
    import sys

    from builder.image import config, media
    from builder.llb import ops
    from builder.plumbing.tagged import record_table

    return record_table(sys.modules[__name__], ops, config, media)


_STAMP: list[str] = []


def converter_stamp() -> str:
    """Names the code that makes plans: a memo entry made by other code (an upgrade, an edited
    checkout) is not used. The size and mtime of each source file, not their bytes: a stat each."""
    if not _STAMP:
        import importlib.util

        here = os.path.dirname(os.path.abspath(__file__))
        grammar = importlib.util.find_spec("builder.grammar")
        dirs = [os.path.join(here, "llb"), os.path.join(here, "image")]
        dirs += list(grammar.submodule_search_locations or ()) if grammar else []
        files = [os.path.join(here, n) for n in ("convert.py", "expand.py", "plan.py")]
        for d in dirs:
            files += sorted(os.path.join(d, n) for n in os.listdir(d) if n.endswith((".py", ".lark")))
        h = hashlib.sha256()
        for path in files:
            st = os.stat(path)
            h.update(f"{os.path.basename(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        _STAMP.append(h.hexdigest())
    return _STAMP[0]
