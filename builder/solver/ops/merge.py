"""merge: the inputs' layers stacked in order, adding none (COPY --link)."""

from __future__ import annotations

from collections.abc import Sequence

from .base import Result, SolverOp, digest_key


class MergeSolverOp(SolverOp):
    reports_progress = False     # its inputs are the steps the user sees

    def cache_key(self) -> str:
        return digest_key(self.op.definition(), [self.state.key(i) for i in self.vertex.inputs])

    def exec(self, inputs: Sequence[Result]) -> Result:
        return Result(tuple(layer for r in inputs for layer in r.layers), inputs[-1].created,
                      cached=all(r.cached for r in inputs))
