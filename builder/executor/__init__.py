"""Run a build step's process in a fresh container over an overlay root file system."""

from builder.executor.container import NamespaceExecutor
from builder.executor.spec import BindMount, Executor, ProcessSpec, RootFS
from builder.executor.users import UserNotFound

__all__ = ["BindMount", "Executor", "NamespaceExecutor", "ProcessSpec", "RootFS", "UserNotFound"]
