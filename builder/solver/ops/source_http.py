"""source.http: ADD <url>. Keyed as BuildKit's HTTP source: the content, the file name and mtime,
not the URL. The file is fetched once per build, when the build is keyed."""

from __future__ import annotations

import os
from collections.abc import Sequence

from builder.errors import BuildError, SolveError

from .base import EMPTY, CopySource, Result, SolverOp, digest_key


class HttpSourceOp(SolverOp):
    reports_progress = False     # read by the file ops that copy from it

    _download = None

    def cache_key(self) -> str:
        download = self.download()
        return digest_key(self.op.kind, self.op.filename, download.digest, download.last_modified)

    def exec(self, inputs: Sequence[Result]) -> Result:
        return EMPTY

    def content_entries(self, selector: tuple[str, ...]) -> dict[str, str]:
        """The fetched file by its content digest, for a miss to name (its key is that digest)."""
        return {self.op.filename: self.download().digest.partition(":")[2]}

    def copy_source(self, scratch: str, index: int) -> CopySource:
        return CopySource(self.download().directory)

    def download(self):
        """The fetched file (builder.solver.http.Download), fetched on first use."""
        if self._download is None:
            from builder.solver.http import fetch

            op = self.op
            try:
                self._download = fetch(op.url, op.filename, op.checksum,
                                       os.path.join(self.state.store.root, "http"))
            except BuildError as error:
                raise SolveError(f"{self.name}: {error}") from None
        return self._download
