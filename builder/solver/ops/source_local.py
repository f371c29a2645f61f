"""source.local: the build context. It adds nothing itself; readers key on what they select."""

from __future__ import annotations

from collections.abc import Sequence

from builder.solver.mounts import MountInput

from .base import EMPTY, CopySource, Result, SolverOp, digest_key


class LocalSourceOp(SolverOp):
    @property
    def reports_progress(self) -> bool:
        """The build context is BuildKit's "[internal] load build context" step; named contexts
        show as no step of their own."""
        return self.op.name == "context"

    def cache_key(self) -> str:
        return digest_key("local", self.op.name)

    def exec(self, inputs: Sequence[Result]) -> Result:
        return EMPTY

    @property
    def _context(self):
        """The build context, or the --build-context directory of that name."""
        if self.op.name == "context":
            return self.state.context
        return self.state.named_contexts[self.op.name]

    def content_digest(self, selector: tuple[str, ...]) -> str:
        return self._context.checksum(selector)

    def content_entries(self, selector: tuple[str, ...]) -> dict[str, str]:
        return self._context.entry_digests(selector)

    def copy_source(self, scratch: str, index: int) -> CopySource:
        # The context arrives root-owned, as BuildKit's file transfer resets owners.
        context = self._context
        return CopySource(context.root, context.rules, reset_owner=True, entry_digest=context.entry_digest)

    def mount_input(self) -> MountInput:
        return MountInput(self.state.key(self.vertex), context=self._context)
