"""What the default network leaves on the machine: links, leases, the NAT table.

Other tests may be using the network at the same moment, so "left behind" means an object nobody
alive holds: a ``bi-N`` link whose lease file no live process has locked, or the NAT table with no
process holding ``nat.users``. Links and locks are read a few times apart, so a lease that is just
being set up or torn down is not mistaken for a leak.
"""

from __future__ import annotations

import os
import subprocess
import time

from builder.executor.network import HOST_IFNAME_PREFIX, NAT_TABLE, STATE_DIR


def host_links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def _locked_inodes() -> set[int]:
    inodes = set()
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            if "->" in fields:  # a waiter, not a holder
                continue
            if len(fields) >= 6 and fields[1] == "FLOCK":
                inodes.add(int(fields[5].rsplit(":", 1)[1]))
    return inodes


def _inode(name: str) -> int | None:
    try:
        return os.stat(os.path.join(STATE_DIR, name)).st_ino
    except FileNotFoundError:
        return None


def _unheld_links() -> set[str]:
    locked = _locked_inodes()
    return {link for link in host_links() if link.startswith(HOST_IFNAME_PREFIX)
            and _inode(f"lease-{link[len(HOST_IFNAME_PREFIX):]}") not in locked}


def nat_table_exists() -> bool:
    return subprocess.run(["nft", "list", "table", "ip", NAT_TABLE], capture_output=True).returncode == 0


def _orphan_table() -> bool:
    return nat_table_exists() and _inode("nat.users") not in _locked_inodes()


def leftovers(settle: float = 3.0) -> list[str]:
    """Network objects nobody holds, seen consistently for SETTLE seconds (the kernel tears a dead
    namespace's veth down asynchronously); [] when everything was cleaned up."""
    deadline = time.monotonic() + settle
    while True:
        found = sorted(_unheld_links()) + (["nft table " + NAT_TABLE] if _orphan_table() else [])
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)
