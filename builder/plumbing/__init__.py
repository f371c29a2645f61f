"""Plumbing every layer uses: Linux syscalls (more leaf modules join it as they are split out)."""
