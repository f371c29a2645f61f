"""Run a build step's process in a fresh container over an overlay root file system.

The re-exports resolve on first use, so that the network agent (`python -m
builder.executor.network`) starts without importing the container machinery.
"""

from builder.plumbing.lazy import lazy_exports

__getattr__ = lazy_exports("builder.executor", {
    "NamespaceExecutor": "container",
    "OutOfMemory": "cgroups",
    **{name: "spec" for name in ("BindMount", "Executor", "LayeredMount", "Mount", "ProcessSpec", "ResourceLimits",
                                 "RootFS", "Sandbox", "SecretFile", "TmpfsMount")},
    "UserNotFound": "users",
})

__all__ = ["BindMount", "Executor", "LayeredMount", "Mount", "NamespaceExecutor", "OutOfMemory", "ProcessSpec",
           "ResourceLimits", "RootFS", "Sandbox", "SecretFile", "TmpfsMount", "UserNotFound"]
