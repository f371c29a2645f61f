"""Run a build step's process in a fresh container over an overlay root file system."""

from builder.executor.container import NamespaceExecutor
from builder.executor.spec import (BindMount, Executor, LayeredMount, Mount, ProcessSpec, RootFS,
                                   SecretFile, TmpfsMount)
from builder.executor.users import UserNotFound

__all__ = ["BindMount", "Executor", "LayeredMount", "Mount", "NamespaceExecutor", "ProcessSpec", "RootFS",
           "SecretFile", "TmpfsMount", "UserNotFound"]
