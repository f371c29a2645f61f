"""LLB-like vertex types and their canonical digests."""

from builder.llb.ops import (
    CopyAction,
    ExecOp,
    FileOp,
    ImageSource,
    LocalSource,
    MkdirAction,
    Op,
    Vertex,
    canonical_json,
)

__all__ = ["CopyAction", "ExecOp", "FileOp", "ImageSource", "LocalSource", "MkdirAction", "Op", "Vertex",
           "canonical_json"]
