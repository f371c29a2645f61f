"""source.inline: a COPY/ADD heredoc as a source tree of one file, keyed by its text."""

from __future__ import annotations

import os
from collections.abc import Sequence

from .base import EMPTY, CopySource, Result, SolverOp, digest_key


class InlineFileOp(SolverOp):
    reports_progress = False     # read by the file ops that copy from it

    def cache_key(self) -> str:
        return digest_key(self.op.definition())

    def exec(self, inputs: Sequence[Result]) -> Result:
        return EMPTY

    def copy_source(self, scratch: str, index: int) -> CopySource:
        """The heredoc's one-file tree under SCRATCH: mode 0644 and the current time, as
        BuildKit's Mkfile."""
        tree = os.path.join(scratch, str(index))
        path = os.path.join(tree, self.op.name.lstrip("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.op.data)
        os.chmod(path, 0o644)
        return CopySource(tree)
