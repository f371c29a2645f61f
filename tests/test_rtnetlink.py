"""The network agent's netlink requests, in network namespaces the test makes itself (in a child
process, so nothing is left on the host)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.root

# In a child: a namespace "host" (its own, unshared), another for the peer, then a veth pair
# between them, addresses, links up and a default route, as the agent makes them; prints what
# `ip` says in both, and how the refused requests failed.
_CHILD = r"""
import errno, json, os, socket, subprocess
from builder.executor.rtnetlink import NetlinkError, Rtnetlink
from builder.plumbing import linux

linux.unshare(linux.CLONE_NEWNET)
host_ns = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
linux.unshare(linux.CLONE_NEWNET)
peer_ns = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
inner = Rtnetlink()
linux.setns(host_ns, linux.CLONE_NEWNET)
host = Rtnetlink()

host.add_veth("bi-t", "eth0", peer_ns)
index = host.link_index("bi-t")
host.add_address(index, "10.89.250.1", 30)
host.set_up(index)
inner.set_up(inner.link_index("lo"))
eth0 = inner.link_index("eth0")
inner.add_address(eth0, "10.89.250.2", 30)
inner.set_up(eth0)
inner.add_default_route("10.89.250.1")

out = {"missing": host.link_index("nope")}
try:
    host.add_veth("bi-t", "eth1", peer_ns)
except NetlinkError as exc:
    out["again"] = errno.errorcode[exc.errno]
out["host"] = subprocess.run(["ip", "-4", "-o", "addr", "show", "bi-t"], capture_output=True, text=True).stdout
linux.setns(peer_ns, linux.CLONE_NEWNET)
out["peer"] = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
out["route"] = subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
out["ping"] = subprocess.run(["busybox", "ping", "-c", "1", "-W", "2", "10.89.250.1"], capture_output=True).returncode
linux.setns(host_ns, linux.CLONE_NEWNET)
host.delete_link(index)
out["deleted"] = host.link_index("bi-t")
print(json.dumps(out))
"""


def test_a_veth_pair_with_addresses_and_a_default_route():
    done = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["missing"] is None
    assert out["again"] == "EEXIST"
    assert "10.89.250.1/30" in out["host"]
    assert "lo" in out["peer"] and "127.0.0.1/8" in out["peer"]
    assert "eth0" in out["peer"] and "10.89.250.2/30" in out["peer"]
    assert "default via 10.89.250.1 dev eth0" in out["route"]
    assert out["ping"] == 0
    assert out["deleted"] is None
