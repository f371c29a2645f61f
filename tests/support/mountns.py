"""Run test code in a private mount namespace, so no mount it makes is ever visible to the host."""

from __future__ import annotations

import threading

from builder.plumbing import linux


def in_private_mount_namespace(fn):
    """FN's result, run on a thread of its own that unshares its mount namespace first (mounts
    go when the thread ends); FN's exception is raised here."""
    result = {}

    def body():
        try:
            linux.unshare(linux.CLONE_NEWNS)
            linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
            result["value"] = fn()
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")
