"""Every error build-image raises on purpose, in one tree.

    BuildError
    ├── ParseError            a Dockerfile that does not parse: file, line, message
    ├── SolveError            a build step that cannot be planned or keyed
    │   ├── SourceNotFound    a COPY/ADD source missing from the context or a stage
    │   └── ExecutionError    a RUN whose process failed: command, exit code, last output
    ├── RegistryError         talking to a registry failed
    │   ├── AuthenticationError
    │   ├── NotFoundError     unknown repository, manifest or blob
    │   └── UnsupportedMediaType
    ├── StoreError            the local store cannot do what was asked
    │   ├── BlobNotFound
    │   ├── DigestMismatch    content does not hash to the digest it claims
    │   └── ImageNotFound
    └── ExportError           writing an output failed

The CLI turns any of these into one line and a non-zero exit code; other exceptions are bugs.
"""

from __future__ import annotations


class BuildError(Exception):
    """Root of every error build-image raises on purpose."""


class ParseError(BuildError):
    def __init__(self, message: str, *, filename: str = "Dockerfile", line: int | None = None):
        self.message = message
        self.filename = filename
        self.line = line
        where = f"{filename}:{line}" if line is not None else filename
        super().__init__(f"{where}: {message}")


class SolveError(BuildError):
    pass


class SourceNotFound(SolveError):
    pass


class ExecutionError(SolveError):
    def __init__(self, command: str, exit_code: int, last_lines: list[str] | tuple[str, ...] = (),
                 step: str = ""):
        self.command = command
        self.exit_code = exit_code
        self.last_lines = tuple(last_lines)
        self.step = step  # the progress name of the failed step, "[stage 2/3] RUN make"
        super().__init__(f'process "{command}" did not complete successfully: exit code: {exit_code}')


class RegistryError(BuildError):
    pass


class AuthenticationError(RegistryError):
    pass


class NotFoundError(RegistryError):
    pass


class UnsupportedMediaType(RegistryError):
    pass


class StoreError(BuildError):
    pass


class BlobNotFound(StoreError):
    pass


class DigestMismatch(StoreError):
    def __init__(self, expected: str, actual: str, what: str = "content"):
        self.expected = expected
        self.actual = actual
        super().__init__(f"{what} digest mismatch: expected {expected}, got {actual}")


class ImageNotFound(StoreError):
    pass


class ExportError(BuildError):
    pass
