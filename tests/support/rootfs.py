"""A tiny root filesystem from Debian's busybox-static: one binary and a link per applet.

Tests and examples build their base image from this, so nothing comes from the internet.
"""

from __future__ import annotations

import os
import shutil
import subprocess

BUSYBOX = "/bin/busybox"

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
app:x:1000:1000:app:/home/app:/bin/sh
"""
GROUP = """root:x:0:
daemon:x:1:
users:x:100:app
app:x:1000:
nogroup:x:65534:
"""


def busybox_applets() -> list[str]:
    out = subprocess.run([BUSYBOX, "--list-full"], check=True, capture_output=True, text=True).stdout
    return sorted(line.strip() for line in out.splitlines() if line.strip())


def make_busybox_rootfs(dest: str) -> str:
    """Fill DEST (created if missing) with busybox, its applet links, /etc/passwd and /etc/group."""
    if not os.path.exists(BUSYBOX):
        raise RuntimeError("busybox-static is not installed (apt-get install busybox-static)")
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "tmp", "home/app", "proc", "dev", "sys"):
        os.makedirs(os.path.join(dest, d), exist_ok=True)
    os.chmod(os.path.join(dest, "tmp"), 0o1777)
    os.chmod(os.path.join(dest, "root"), 0o700)
    os.chown(os.path.join(dest, "home/app"), 1000, 1000)
    shutil.copy2(BUSYBOX, os.path.join(dest, "bin/busybox"))
    for applet in busybox_applets():
        link = os.path.join(dest, applet.lstrip("/"))
        if os.path.lexists(link) or applet == "bin/busybox":
            continue
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink("/bin/busybox", link)
    with open(os.path.join(dest, "etc/passwd"), "w") as f:
        f.write(PASSWD)
    with open(os.path.join(dest, "etc/group"), "w") as f:
        f.write(GROUP)
    return dest
