"""source.image: a base image, keyed by its manifest digest; its layers are fetched on exec."""

from __future__ import annotations

from collections.abc import Sequence

from builder.errors import SolveError

from .base import LayerRef, Result, SolverOp, digest_key


class ImageSourceOp(SolverOp):
    explains_misses = True       # CACHED when its layers were in the store; else why they were fetched

    def cache_key(self) -> str:
        return digest_key("image", self.state.sources.by_ref(self.op.ref).manifest_digest)

    def facts(self) -> dict:
        digest = self.state.sources.by_ref(self.op.ref).manifest_digest
        return {"base": self.op.ref.removesuffix("@" + digest), "digest": digest}

    def exec(self, inputs: Sequence[Result]) -> Result:
        """The image's layers, fetched now if the store lacks them (exports need them);
        cached when nothing had to be fetched."""
        ref = self.op.ref
        image = self.state.sources.by_ref(ref)
        if len(image.config.diff_ids) != len(image.layers):
            raise SolveError(f"{ref}: config lists {len(image.config.diff_ids)} layers, "
                             f"manifest {len(image.layers)}")
        fetched = self.state.sources.ensure_layers(ref)
        return Result(tuple(LayerRef(d.digest, diff_id, d.size, d.media_type)
                            for d, diff_id in zip(image.layers, image.config.diff_ids)), cached=not fetched)
