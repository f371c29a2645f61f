"""The op kinds the solver knows: an llb Op's `kind` -> the class that keys and runs it.

Each kind lives in its own module, imported the first time a build uses it. A new op kind is
one new module (its llb data class and its `SolverOp`) and one line here.
"""

from __future__ import annotations

import importlib

from builder.errors import SolveError
from builder.llb import Op

from .base import EMPTY, LayerOp, LayerRef, Result, SolverOp, SolveState

REGISTRY: dict[str, str] = {
    "source.image": "source_image:ImageSourceOp",
    "source.local": "source_local:LocalSourceOp",
    "source.http": "source_http:HttpSourceOp",
    "source.inline": "source_inline:InlineFileOp",
    "exec": "exec:ExecSolverOp",
    "file": "file:FileSolverOp",
    "merge": "merge:MergeSolverOp",
}

_loaded: dict[str, type[SolverOp]] = {}


def op_class(op: Op) -> type[SolverOp]:
    """The SolverOp class for OP's kind; SolveError for a kind nobody registered."""
    kind = getattr(type(op), "kind", None)
    cls = _loaded.get(kind)
    if cls is None:
        entry = REGISTRY.get(kind)
        if entry is None:
            raise SolveError(f"unknown op {type(op).__name__}")
        module, _, name = entry.partition(":")
        cls = _loaded[kind] = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    return cls


__all__ = ["EMPTY", "LayerOp", "LayerRef", "REGISTRY", "Result", "SolveState", "SolverOp", "op_class"]
