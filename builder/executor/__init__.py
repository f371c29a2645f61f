"""Run a build step's process in a fresh container over an overlay root file system.

The re-exports resolve on first use, so that the network agent (`python -m
builder.executor.network`) starts without importing the container machinery.
"""

from builder.plumbing.lazy import lazy_exports

__getattr__ = lazy_exports("builder.executor", {
    "NamespaceExecutor": "container",
    **{name: "spec" for name in ("BindMount", "Executor", "LayeredMount", "Mount", "ProcessSpec", "RootFS",
                                 "SecretFile", "TmpfsMount")},
    "UserNotFound": "users",
})

__all__ = ["BindMount", "Executor", "LayeredMount", "Mount", "NamespaceExecutor", "ProcessSpec", "RootFS",
           "SecretFile", "TmpfsMount", "UserNotFound"]
