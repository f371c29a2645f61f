"""Run a build step's process in a fresh container over an overlay root file system."""

from builder.executor.cgroups import OutOfMemory
from builder.executor.container import NamespaceExecutor
from builder.executor.spec import (BindMount, Executor, LayeredMount, Mount, ProcessSpec, ResourceLimits, RootFS,
                                   Sandbox, SecretFile, TmpfsMount)
from builder.executor.users import UserNotFound

__all__ = ["BindMount", "Executor", "LayeredMount", "Mount", "NamespaceExecutor", "OutOfMemory", "ProcessSpec",
           "ResourceLimits", "RootFS", "Sandbox", "SecretFile", "TmpfsMount", "UserNotFound"]
