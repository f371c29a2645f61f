"""build-image: a daemonless Dockerfile build engine that produces OCI images.

The public API is small: `build()` with `BuildOptions` (outputs as `OutputSpec` or the CLI's
strings) giving a `BuildResult`, `parse()`, and the error tree::

    import builder

    result = builder.build(builder.BuildOptions("ctx", tags=["app:1"], outputs=["type=oci,dest=app.tar"]))
    print(result.image_id)

Everything else is private by convention. The build machinery lives in `builder.pipeline`, a
module whose name cannot shadow `build` here.
"""

from builder.errors import BuildError, ExecutionError, ParseError
from builder.plumbing.lazy import lazy_exports
from builder.version import __version__


def build(options, progress=None, executor=None):
    """Builds an image from OPTIONS (a `BuildOptions`) and returns a `BuildResult`.

    PROGRESS, if given, is called with each progress event (`builder.events`).
    """
    from builder.events import ignore
    from builder.pipeline import build as _build

    return _build(options, progress or ignore, executor)


def verify_reproducible(options, progress=None, executor=None):
    """Builds OPTIONS twice in fresh temporary stores, varying what should not matter (time, TZ,
    hostname, umask, jobs, the context's order and path, the environment), and returns a
    `VerifyResult`: `.reproducible`, the two image IDs and, when they differ, the diff and fixes."""
    from builder.events import ignore
    from builder.verify import verify_reproducible as _verify

    return _verify(options, progress or ignore, executor)


def parse(text: str, filename: str = "Dockerfile"):
    """Parses Dockerfile text into typed instruction nodes."""
    from builder.grammar import parse_dockerfile

    return parse_dockerfile(text, filename)


# Resolved on first use, so `import builder` stays as cheap as the CLI's fast paths need.
__getattr__ = lazy_exports("builder", {"BuildOptions": "pipeline", "BuildResult": "pipeline",
                                       "OutputSpec": "pipeline", "VerifyResult": "verify"})

__all__ = ["BuildError", "BuildOptions", "BuildResult", "ExecutionError", "OutputSpec", "ParseError",
           "VerifyResult", "__version__", "build", "parse", "verify_reproducible"]
