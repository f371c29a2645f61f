"""Every error build-image raises on purpose, in one tree.

The classes defined in this module, and those defined beside the code that raises them
(their module in brackets):

    BuildError
    ├── ParseError              a Dockerfile that does not parse: file, line, message
    │   └── ExpansionError      [expand] ${V:?message} with V unset, bad substitution syntax
    ├── SolveError              a build step that cannot be planned or keyed
    │   ├── SourceNotFound      a COPY/ADD source missing from the context or a stage
    │   ├── ExecutionError      a RUN whose process failed: command, exit code, last output
    │   ├── UserNotFound        [executor.users] USER names a user or group the image lacks
    │   ├── OutOfMemory         [executor.cgroups] a RUN killed by the kernel at its memory limit
    │   ├── CgroupError         [executor.cgroups] a RUN's cgroup (devices, limits) cannot be set up
    │   └── NetworkError        [executor.network] the default network could not be set up
    ├── RegistryError           talking to a registry failed
    │   ├── AuthenticationError
    │   ├── NotFoundError       unknown repository, manifest or blob
    │   └── UnsupportedMediaType
    ├── StoreError              the local store cannot do what was asked
    │   ├── BlobNotFound
    │   ├── DigestMismatch      content does not hash to the digest it claims
    │   ├── ImageNotFound
    │   ├── InvalidImage        [image.manifest] a manifest or config that is no runnable image
    │   ├── LayerError          [snapshot.layers] a layer that cannot be written or read safely
    │   ├── LayerContentError   [snapshot.backed] a built layer whose snapshot is gone or changed
    │   ├── CorruptLayer        [lifecycle.layertar] a layer blob that does not decompress
    │   ├── ImageConflict       [lifecycle.tagging] an image rmi cannot remove without --force
    │   ├── InvalidArchive      [lifecycle.image_archive] not (entirely) a docker or OCI image archive
    │   ├── InvalidRootfs       [lifecycle.rootfs] input to `import` that is not a tar archive
    │   └── InvalidImageSource  [lifecycle.diff] a `diff` source that names no readable image
    ├── ExportError             writing an output failed
    ├── InvalidCacheConfig      [remotecache.format] an imported build cache that is not BuildKit's cacheconfig.v0
    ├── InvalidReference        [registry.reference] an image name Docker would refuse
    ├── InvalidFilter           [lifecycle.filters] a --filter docker would refuse
    ├── InvalidPlatform         [image.platform_spec] a --platform that is no platform specifier
    └── TemplateError           [cli.gotemplate] a --format template that does not parse or run

The CLI turns any of these into one line and a non-zero exit code; other exceptions are bugs.
tests/test_error_tree.py keeps this drawing complete.
"""

from __future__ import annotations


class BuildError(Exception):
    """Root of every error build-image raises on purpose."""

    step = ""                       # the progress name of the step it failed, when it is one
    vertex = ""                     # that step's vertex digest (set by the solver)
    source: tuple[str, ...] = ()    # the Dockerfile lines it came from, as BuildKit shows them


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
