"""Remembers which image a build produced from which inputs, so that an unchanged rebuild skips
parsing, planning and solving altogether.

A build's result is a pure function of the Dockerfile text, the options that change its meaning
(build args, target, platform, SOURCE_DATE_EPOCH), the base images' manifest digests and the
content of what its COPY/ADD steps read from the context. A record at
ROOT/cache/plans/<inputs key>.json keeps the last two with the image they produced. A rebuild
re-resolves every base image and re-checksums every context source; only if all of them are
unchanged, and every blob of the image is still in the store, is the recorded image reused.
Anything else (a moved tag, an edited file, a pruned blob) falls through to a full build.
"""

from __future__ import annotations

import hashlib
import json
import os

from builder.context import BuildContext
from builder.plumbing.files import write_atomically
from builder.plumbing.records import dataclass
from builder.version import __version__

FORMAT = 2  # bump when the converter's output for the same inputs changes


@dataclass(frozen=True)
class PlanRecord:
    manifest_digest: str
    bases: tuple[tuple[str, str, str], ...]               # (name, platform, manifest digest)
    sources: tuple[tuple[tuple[str, ...], str], ...]      # (COPY paths, content checksum)
    steps: tuple[str, ...]                                # progress names, in order
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {"format": FORMAT, "image": self.manifest_digest, "bases": [list(b) for b in self.bases],
                "sources": [[list(p), c] for p, c in self.sources], "steps": list(self.steps),
                "warnings": list(self.warnings)}

    @classmethod
    def from_json(cls, data: dict) -> "PlanRecord":
        return cls(data["image"], tuple(tuple(b) for b in data["bases"]),
                   tuple((tuple(p), c) for p, c in data["sources"]), tuple(data["steps"]),
                   tuple(data.get("warnings", ())))


class RecordingContext(BuildContext):
    """A build context that remembers every checksum the cache keys were computed from."""

    def __init__(self, root: str, rules=(), **options):
        super().__init__(root, rules, **options)
        self.reads: dict[tuple[str, ...], str] = {}

    def checksum(self, sources: tuple[str, ...]) -> str:
        digest = super().checksum(sources)
        self.reads[tuple(sources)] = digest
        return digest


def inputs_key(dockerfile_text: str, dockerfile_name: str, context: BuildContext, *, build_args, target,
               platform: str, source_date_epoch: int | None, run_options: dict | None = None) -> str:
    body = {
        "format": FORMAT,
        "version": __version__,
        "dockerfile": [dockerfile_name, dockerfile_text],
        "ignore": [[r.pattern, r.negated] for r in context.rules],
        "build_args": sorted(build_args.items()),
        "target": target,
        "platform": platform,
        "epoch": source_date_epoch,
        "run": run_options or {},
    }
    encoded = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()


class PlanCache:
    def __init__(self, root: str):
        self.dir = os.path.join(root, "cache", "plans")

    def _path(self, key: str) -> str:
        return os.path.join(self.dir, key + ".json")

    def get(self, key: str) -> PlanRecord | None:
        try:
            with open(self._path(key)) as f:
                data = json.load(f)
            if data.get("format") != FORMAT:
                return None
            return PlanRecord.from_json(data)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, key: str, record: PlanRecord) -> None:
        os.makedirs(self.dir, exist_ok=True)
        write_atomically(self._path(key), json.dumps(record.to_json(), sort_keys=True).encode())

    def order_memo(self) -> "OrderFiles":
        return OrderFiles(os.path.join(self.dir, "orders"))

    def still_valid(self, record: PlanRecord, sources, context: BuildContext, blobs) -> bool:
        """True when the recorded image is what a full build would produce now."""
        from builder.errors import BuildError

        try:
            for name, platform, digest in record.bases:
                if sources.resolve(name, platform).manifest_digest != digest:
                    return False
            for paths, checksum in record.sources:
                if context.checksum(paths) != checksum:
                    return False
        except BuildError:
            return False  # a source went missing: the full build reports it properly
        from builder.image.manifest import image_complete

        return image_complete(blobs, record.manifest_digest)


class OrderFiles:
    """Solve orders (builder.llb.order) by final vertex digest, a small JSON file each. Only a
    cache, and checked on use, so written without fsync (builder.plumbing.files)."""

    def __init__(self, directory: str):
        self.dir = directory

    def _path(self, final_digest: str) -> str:
        return os.path.join(self.dir, final_digest.partition(":")[2] + ".json")

    def get(self, final_digest: str) -> list[str] | None:
        try:
            with open(self._path(final_digest)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def put(self, final_digest: str, order: list[str]) -> None:
        try:
            os.makedirs(self.dir, exist_ok=True)
            write_atomically(self._path(final_digest), json.dumps(order).encode(), durable=False)
        except OSError:
            pass  # a memo that cannot be written costs the next build a recomputation


# Ops whose inputs a record captures: their definition (in the Dockerfile text), base images and
# context checksums. An ADD URL (source.http) depends on a server's answer, so it is never skipped.
_MEMOIZABLE_KINDS = frozenset({"source.image", "source.local", "source.inline", "exec", "file", "merge"})


def memoizable(plan) -> bool:
    return all(v.op.kind in _MEMOIZABLE_KINDS for v in plan.vertices)
