"""Builds escape_probe.c (static, so it runs in a busybox root) for the sandbox escape tests."""

from __future__ import annotations

import os
import shutil
import subprocess

SOURCE = os.path.join(os.path.dirname(__file__), "escape_probe.c")


def build_probe(dest: str) -> str:
    """Compile the probe to DEST; raises RuntimeError without a C compiler."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise RuntimeError("gcc is not installed (apt-get install gcc libc6-dev)")
    subprocess.run([compiler, "-static", "-O1", "-o", dest, SOURCE], check=True, capture_output=True)
    return dest
