"""The few rtnetlink requests the network agent makes: a veth pair, addresses, links up, a route.

The messages are pyroute2's (its ``ifinfmsg``, ``ifaddrmsg`` and ``rtmsg`` encode them); only the
exchange is ours, one blocking request and its acknowledgement at a time. pyroute2's own
``IPRoute`` runs on asyncio, and importing it (asyncio, ssl, multiprocessing, its mock and tc
modules) took 140-220 ms here against about 30 ms for the three message classes, on the path of
every build's first RUN.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys

_NETLINK_ROUTE = 0
_NLMSG_ERROR = 2
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_EXCL, _NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
_RTM_NEWLINK, _RTM_DELLINK, _RTM_GETLINK, _RTM_NEWADDR, _RTM_NEWROUTE = 16, 17, 18, 20, 24
_IFF_UP = 0x1
_RT_TABLE_MAIN, _RTPROT_BOOT, _RT_SCOPE_UNIVERSE, _RTN_UNICAST = 254, 3, 0, 1
_HEADER = struct.Struct("=IHHII")          # nlmsghdr: length, type, flags, sequence, port
_IFINDEX_OFFSET = _HEADER.size + 4          # ifinfmsg: family, pad, type (u16), then the index


class NetlinkError(OSError):
    """The kernel refused a request; ``errno`` says why."""


def _message_classes():
    """pyroute2's ifinfmsg, ifaddrmsg and rtmsg, without running the package's __init__ (which
    imports all of pyroute2); should that fail, through the package the ordinary way."""
    import importlib.util

    if "pyroute2" not in sys.modules:
        spec = importlib.util.find_spec("pyroute2")
        if spec is not None and spec.submodule_search_locations:
            sys.modules["pyroute2"] = importlib.util.module_from_spec(spec)
    try:
        from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
        from pyroute2.netlink.rtnl.rtmsg import rtmsg
    except Exception:
        for name in [n for n in sys.modules if n == "pyroute2" or n.startswith("pyroute2.")]:
            del sys.modules[name]
        from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
        from pyroute2.netlink.rtnl.rtmsg import rtmsg
    return ifinfmsg, ifaddrmsg, rtmsg


class Rtnetlink:
    """A NETLINK_ROUTE socket in the network namespace it was opened in."""

    _classes = None

    def __init__(self, sock: socket.socket | None = None):
        if Rtnetlink._classes is None:
            Rtnetlink._classes = _message_classes()
        self._ifinfmsg, self._ifaddrmsg, self._rtmsg = Rtnetlink._classes
        self._sock = sock or socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_ROUTE)
        self._sequence = 0

    def close(self) -> None:
        self._sock.close()

    def add_veth(self, name: str, peer_name: str, peer_netns_fd: int) -> None:
        """A veth pair: NAME here, PEER_NAME in the namespace of PEER_NETNS_FD."""
        peer = {"attrs": [("IFLA_IFNAME", peer_name), ("IFLA_NET_NS_FD", peer_netns_fd)]}
        info = {"attrs": [("IFLA_INFO_KIND", "veth"), ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", peer)]})]}
        msg = self._ifinfmsg()
        msg["attrs"] = [("IFLA_IFNAME", name), ("IFLA_LINKINFO", info)]
        self._request(msg, _RTM_NEWLINK, _NLM_F_CREATE | _NLM_F_EXCL)

    def link_index(self, name: str) -> int | None:
        """The index of link NAME, None if there is none."""
        msg = self._ifinfmsg()
        msg["attrs"] = [("IFLA_IFNAME", name)]
        try:
            reply = self._request(msg, _RTM_GETLINK, 0)
        except NetlinkError as exc:
            if exc.errno == errno.ENODEV:
                return None
            raise
        if reply is None:
            raise NetlinkError(errno.EPROTO, f"no answer for link {name}")
        return struct.unpack_from("=i", reply, _IFINDEX_OFFSET)[0]

    def set_up(self, index: int) -> None:
        msg = self._ifinfmsg()
        msg["index"], msg["flags"], msg["change"] = index, _IFF_UP, _IFF_UP
        self._request(msg, _RTM_NEWLINK, 0)

    def delete_link(self, index: int) -> None:
        msg = self._ifinfmsg()
        msg["index"] = index
        self._request(msg, _RTM_DELLINK, 0)

    def add_address(self, index: int, address: str, prefixlen: int) -> None:
        msg = self._ifaddrmsg()
        msg["family"], msg["prefixlen"], msg["index"] = socket.AF_INET, prefixlen, index
        msg["attrs"] = [("IFA_LOCAL", address), ("IFA_ADDRESS", address)]
        self._request(msg, _RTM_NEWADDR, _NLM_F_CREATE | _NLM_F_EXCL)

    def add_default_route(self, gateway: str) -> None:
        msg = self._rtmsg()
        msg["family"], msg["dst_len"], msg["table"] = socket.AF_INET, 0, _RT_TABLE_MAIN
        msg["proto"], msg["scope"], msg["type"] = _RTPROT_BOOT, _RT_SCOPE_UNIVERSE, _RTN_UNICAST
        msg["attrs"] = [("RTA_GATEWAY", gateway)]
        self._request(msg, _RTM_NEWROUTE, _NLM_F_CREATE | _NLM_F_EXCL)

    def _request(self, msg, kind: int, flags: int) -> bytes | None:
        """Send MSG as a request of KIND; the reply before the acknowledgement (if any)."""
        self._sequence += 1
        header = msg["header"]
        header["type"], header["flags"] = kind, _NLM_F_REQUEST | _NLM_F_ACK | flags
        header["sequence_number"], header["pid"] = self._sequence, 0
        msg.encode()
        self._sock.send(msg.data)
        reply = None
        while True:
            data = self._sock.recv(65536)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind_back, _, sequence, _ = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    raise NetlinkError(errno.EPROTO, "malformed netlink reply")
                if sequence == self._sequence:
                    if kind_back == _NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", data, offset + _HEADER.size)
                        if code:
                            raise NetlinkError(-code, os.strerror(-code))
                        return reply
                    reply = data[offset:offset + length]
                offset += (length + 3) & ~3
