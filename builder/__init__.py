"""build-image: a daemonless Dockerfile build engine that produces OCI images.

The public API is small: `build()` with `BuildOptions`, `parse()`, and the error tree.
"""

from builder.errors import BuildError, ExecutionError, ParseError
from builder.version import __version__


def build(options, progress=None, executor=None):
    """Builds an image; see `builder.build.BuildOptions` and `BuildResult`."""
    from builder.build import build as _build
    from builder.events import ignore

    return _build(options, progress or ignore, executor)


def parse(text: str, filename: str = "Dockerfile"):
    """Parses Dockerfile text into typed instruction nodes."""
    from builder.grammar import parse_dockerfile

    return parse_dockerfile(text, filename)


__all__ = ["BuildError", "ExecutionError", "ParseError", "__version__", "build", "parse"]
