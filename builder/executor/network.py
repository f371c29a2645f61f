"""The network of a RUN: ``none``, ``host``, or ``default`` (a private network like Docker's bridge).

``default`` gives each RUN its own network namespace, joined to the host by a veth pair::

    host netns                                   the RUN's netns
    bi-N   10.89.a.b+1/30   <-- veth pair -->    eth0  10.89.a.b+2/30, default route via bi-N
      \\--> nftables: ip saddr 10.89.0.0/16 masquerade on the way out (table ip build_image)

Two processes share the work:

    build-image (BridgeNetwork)  --"L"-->  agent (python -m builder.executor.network, serve())
        a RUN's supervisor       <--JSON + the namespace's fd (SCM_RIGHTS)--
        setns()s into it          --"R<N>"--> (RUN over: given back)   --"C"--> (build over)

The agent imports pyroute2's netlink messages (never build-image itself), makes namespaces and keeps
a few ready, so its import and netlink work run beside the build, on another core and outside the
build's GIL. A namespace is made by the agent unsharing its own network namespace, opening it and a
netlink socket in it, and switching back. The first one is made while nft declares the NAT table.

Lease N is the /30 block N of 10.89.0.0/16 and the interface name ``bi-N``. The agent holds it by
an ``flock`` on ``/run/build-image/network/lease-N``, so concurrent steps, concurrent build-image
processes and different store roots never share an address or a name, and a killed agent's leases
free themselves (the kernel drops its locks).

Nothing outlives a step:

- The namespace is never bind-mounted anywhere: it lives only while a descriptor or a process
  holds it. A RUN's processes die with build-image (PR_SET_PDEATHSIG); when build-image ends, or
  dies, the agent reads end of file, closes its descriptors and exits. Closing the last descriptor
  makes the kernel destroy the namespace and the veth pair with it, in the background. Whoever
  takes lease N next deletes a ``bi-N`` that is still going away (the agent avoids indices it gave
  back in the last two seconds).
- The NAT table is shared by every agent: each holds a shared ``flock`` on ``nat.users``; the last
  one to leave (the one that gets the lock exclusively) deletes the table. An agent that was itself
  SIGKILLed leaves it to the next agent that leaves.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

from builder.errors import SolveError
from builder.executor.rtnetlink import NetlinkError, Rtnetlink
from builder.plumbing import linux
from builder.plumbing.records import dataclass

STATE_DIR = "/run/build-image/network"
POOL = ipaddress.IPv4Network("10.89.0.0/16")
NAT_TABLE = "build_image"
HOST_IFNAME_PREFIX = "bi-"
CONTAINER_IFNAME = "eth0"
# Docker's resolvers when the host's are all on loopback (unreachable from a container).
FALLBACK_NAMESERVERS = ("8.8.8.8", "8.8.4.4")
_SYSTEMD_RESOLV_CONF = "/run/systemd/resolve/resolv.conf"
_NETLINK_ROUTE = 0
_COOLING_SECONDS = 2.0


class NetworkError(SolveError):
    """The default network could not be set up for a RUN."""


@dataclass(frozen=True)
class NetworkLease:
    """A ready network namespace for one RUN: join it with ``setns(netns_fd, CLONE_NEWNET)``."""

    index: int
    netns_fd: int
    host_ifname: str
    address: str            # the container's (eth0)
    gateway: str            # the host end, the container's default route

    @staticmethod
    def addresses(index: int) -> tuple[str, str]:
        """(gateway, container address) of lease INDEX: the /30 block INDEX of the pool."""
        block = int(POOL.network_address) + 4 * index
        return str(ipaddress.IPv4Address(block + 1)), str(ipaddress.IPv4Address(block + 2))


def lease_count() -> int:
    return POOL.num_addresses // 4


# ---- the machine-wide lease table ------------------------------------------------------------

class _LeaseTable:
    """Leases as flock'ed files; taking the lowest free one keeps the files few."""

    def __init__(self, state_dir: str):
        self.state_dir = state_dir
        os.makedirs(state_dir, mode=0o700, exist_ok=True)

    def take(self, avoid: frozenset[int] = frozenset()) -> tuple[int, int]:
        """(index, lock fd) of a free lease not in AVOID, now held by this process."""
        for index in range(lease_count()):
            if index in avoid:
                continue
            fd = os.open(os.path.join(self.state_dir, f"lease-{index}"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                         0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return index, fd
        raise NetworkError(f"no free network address: all {lease_count()} leases of {POOL} are in use")

    @staticmethod
    def give_back(lock_fd: int) -> None:
        os.close(lock_fd)  # closing drops the flock


class _NatTable:
    """The masquerade rule for the pool, shared by every process using the default network."""

    _RULESET = (
        f"table ip {NAT_TABLE} {{\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f'    ip saddr {POOL} oifname != "{HOST_IFNAME_PREFIX}*" masquerade\n'
        "  }\n"
        "}\n"
    )

    def __init__(self, state_dir: str):
        """Start declaring the table; ``ready()`` waits for it (the agent makes its first namespace
        meanwhile)."""
        self._users = os.open(os.path.join(state_dir, "nat.users"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._mutex_path = os.path.join(state_dir, "nat.lock")
        self._failure: str | None = None
        try:
            fcntl.flock(self._users, fcntl.LOCK_SH)
            # Held until nft is done: another agent's declaration or deletion waits for it.
            self._declaring: int | None = self._lock_mutex()
            try:
                # One transaction, one nft call: make sure the table exists, drop it, declare it
                # whole. However many processes got here first, exactly one rule remains.
                self._nft = _start_nft(["-f", "-"], f"table ip {NAT_TABLE} {{}}\ndelete table ip {NAT_TABLE}\n"
                                       + self._RULESET)
            except BaseException:
                os.close(self._declaring)
                raise
        except BaseException:
            os.close(self._users)
            raise

    def ready(self) -> None:
        """Wait for the table to be declared; NetworkError if it could not be."""
        if self._declaring is not None:
            try:
                _, errors = self._nft.communicate()
            finally:
                os.close(self._declaring)  # releases the mutex
                self._declaring = None
            if self._nft.returncode != 0:
                detail = errors.strip().splitlines()
                self._failure = ("could not set up NAT for the default network: "
                                 + (detail[-1] if detail else "nft failed"))
        if self._failure is not None:
            raise NetworkError(self._failure)

    def leave(self) -> None:
        """Stop using the table; the last user deletes it."""
        try:
            self.ready()
        except NetworkError:
            pass  # still leave: another user's table may be there
        mutex = self._lock_mutex()
        try:
            fcntl.flock(self._users, fcntl.LOCK_UN)
            try:
                fcntl.flock(self._users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass  # another process still uses it
            else:
                _run_nft(["delete", "table", "ip", NAT_TABLE])  # gone already (a killed user's) is fine
        finally:
            os.close(self._users)
            os.close(mutex)

    def _lock_mutex(self) -> int:
        fd = os.open(self._mutex_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return fd


def _start_nft(args: list[str], script: str) -> subprocess.Popen:
    """nft running ARGS with SCRIPT on its stdin (already written: it is a few hundred bytes)."""
    try:
        nft = subprocess.Popen(["nft", *args], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    except FileNotFoundError:
        raise NetworkError(_NO_NFT) from None
    nft.stdin.write(script)
    nft.stdin.close()
    nft.stdin = None  # communicate() then only reads stderr
    return nft


def _run_nft(args: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["nft", *args], text=True, capture_output=True)
    except FileNotFoundError:
        raise NetworkError(_NO_NFT) from None


_NO_NFT = "the default network needs nftables (the nft command); install it or use --network=none"


# ---- the agent: a process that makes namespaces --------------------------------------------

class _Namespaces:
    """The netlink side, in the agent process: lease slots, NAT, and the namespaces themselves."""

    def __init__(self, state_dir: str):
        self._table = _LeaseTable(state_dir)
        self._host_netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._nat = _NatTable(state_dir)
            try:
                self._host = Rtnetlink()
            except BaseException:
                self._nat.leave()
                raise
        except BaseException:
            os.close(self._host_netns)
            raise
        self._locks: dict[int, int] = {}        # index -> lease lock fd, for every lease handed out or ready
        self._netns: dict[int, int] = {}        # index -> this process's descriptor of its namespace
        self._released: dict[int, float] = {}   # index -> when it was given back

    def nat_ready(self) -> None:
        """Wait for the NAT table (a lease is handed out only then); NetworkError if it failed."""
        self._nat.ready()

    def prepare(self) -> NetworkLease:
        index, lock_fd = self._table.take(self._cooling())
        host_ifname = f"{HOST_IFNAME_PREFIX}{index}"
        gateway, address = NetworkLease.addresses(index)
        netns_fd = inner = None
        try:
            if os.path.exists(f"/sys/class/net/{host_ifname}"):
                self._delete_link(host_ifname)  # its old namespace is still being destroyed
            netns_fd, inner = self._new_namespace()
            self._host.add_veth(host_ifname, CONTAINER_IFNAME, netns_fd)
            host_index = self._host.link_index(host_ifname)
            self._host.add_address(host_index, gateway, 30)
            self._host.set_up(host_index)
            inner.set_up(inner.link_index("lo"))
            container_index = inner.link_index(CONTAINER_IFNAME)
            inner.add_address(container_index, address, 30)
            inner.set_up(container_index)
            inner.add_default_route(gateway)
        except BaseException as exc:
            self._delete_link(host_ifname)
            if netns_fd is not None:
                os.close(netns_fd)
            _LeaseTable.give_back(lock_fd)
            if isinstance(exc, NetworkError):
                raise
            raise NetworkError(f"setting up the network for RUN failed: {exc}") from exc
        finally:
            if inner is not None:
                inner.close()
        self._locks[index] = lock_fd
        self._netns[index] = netns_fd
        return NetworkLease(index, netns_fd, host_ifname, address, gateway)

    def forget(self, index: int) -> None:
        """Give lease INDEX back: closing the last descriptor of its namespace makes the kernel
        destroy it, and the veth pair with it, in the background (batched; deleting the link here
        would cost ~25 ms of synchronize_net)."""
        lock_fd = self._locks.pop(index, None)
        if lock_fd is None:
            return
        os.close(self._netns.pop(index))
        self._released[index] = time.monotonic()
        _LeaseTable.give_back(lock_fd)

    def give_back_all(self) -> None:
        for index in list(self._locks):
            self.forget(index)

    def close(self) -> None:
        self.give_back_all()
        self._nat.leave()
        self._host.close()
        os.close(self._host_netns)

    def _new_namespace(self) -> tuple[int, Rtnetlink]:
        """(fd of a new network namespace, a netlink socket opened inside it); this thread stays put."""
        linux.unshare(linux.CLONE_NEWNET)
        try:
            netns_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_ROUTE)
        finally:
            linux.setns(self._host_netns, linux.CLONE_NEWNET)
        return netns_fd, Rtnetlink(sock)

    def _cooling(self) -> frozenset[int]:
        """Leases given back moments ago: their veth may still be going away, so a new lease takes
        another index rather than wait for it."""
        now = time.monotonic()
        for index, when in list(self._released.items()):
            if now - when > _COOLING_SECONDS:
                del self._released[index]
        return frozenset(self._released)

    def _delete_link(self, ifname: str) -> None:
        try:
            index = self._host.link_index(ifname)
            if index is not None:
                self._host.delete_link(index)
        except NetlinkError as exc:
            if exc.errno != errno.ENODEV:  # gone already is fine
                raise


def serve(sock: socket.socket, state_dir: str, ready: int) -> None:
    """The agent's loop. Requests: b"L" (a lease: answered with its JSON and its namespace's
    descriptor), b"R<index>" (given back), b"C" (build-image is done: every lease is given back,
    then acknowledged with b"K"; the NAT table is left after that, while build-image goes on) or
    end of file (build-image died: the same, unacknowledged). Between requests it keeps READY
    leases made."""
    try:
        namespaces, failure = _Namespaces(state_dir), None
    except NetworkError as exc:
        namespaces, failure = None, str(exc)
    except Exception as exc:
        namespaces, failure = None, f"the default network is not available: {exc}"
    pool: list[NetworkLease] = []
    try:
        while True:
            idle = namespaces is not None and failure is None and len(pool) < ready
            if idle and not select.select([sock], [], [], 0)[0]:
                try:
                    pool.append(namespaces.prepare())
                except NetworkError as exc:
                    failure = str(exc)
                continue
            request = sock.recv(64)
            if request in (b"", b"C"):
                if namespaces is not None:
                    namespaces.give_back_all()
                if request == b"C":
                    try:
                        sock.send(b"K")
                    except OSError:
                        pass  # build-image did not wait (it never leased anything)
                return
            if request == b"L":
                _answer(sock, namespaces, pool, failure)
            elif request.startswith(b"R") and namespaces is not None:
                namespaces.forget(int(request[1:]))
    finally:
        if namespaces is not None:
            namespaces.close()


def _answer(sock: socket.socket, namespaces: _Namespaces | None, pool: list[NetworkLease],
            failure: str | None) -> None:
    try:
        if namespaces is None:
            raise NetworkError(failure or "the default network is not available")
        lease = pool.pop(0) if pool else namespaces.prepare()
        namespaces.nat_ready()
    except NetworkError as exc:
        sock.send(json.dumps({"error": str(exc)}).encode())
        return
    body = {"index": lease.index, "host_ifname": lease.host_ifname, "address": lease.address,
            "gateway": lease.gateway}
    socket.send_fds(sock, [json.dumps(body).encode()], [lease.netns_fd])


def _agent_main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is build-image's; we stop when it hangs up
    sock = socket.socket(fileno=int(os.environ["BUILD_IMAGE_NETWORK_FD"]))
    serve(sock, os.environ.get("BUILD_IMAGE_NETWORK_DIR", STATE_DIR), int(os.environ.get("BUILD_IMAGE_NETWORK_READY", "1")))


# ---- the client: what the executor uses --------------------------------------------------------

class BridgeNetwork:
    """Leases of the default network for the RUNs of one build-image process.

    The namespaces are made by an agent process (``python -m builder.executor.network``), so that
    pyroute2's import and the netlink work run beside the build, on another core and outside its
    GIL, and never in build-image itself. The agent holds the leases; it gives them all back when
    build-image closes the connection, or dies (the socket then reads end of file).
    """

    def __init__(self, state_dir: str = STATE_DIR, ready: int = 1):
        self._state_dir = state_dir
        self._ready = max(ready, 0)
        self._lock = threading.Lock()
        self._agent: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._closed = False
        self._leased = False  # has a RUN had a lease (then close() waits for them to be given back)

    def warm(self) -> None:
        """Start the agent now, so the first leases are ready when the first RUN wants one."""
        with self._lock:
            self._start()

    def acquire(self) -> NetworkLease:
        with self._lock:
            if self._closed:
                raise NetworkError("the network is shut down")
            self._start()
            self._leased = True
            try:
                self._sock.send(b"L")
                data, fds, _, _ = socket.recv_fds(self._sock, 4096, 1)
            except OSError as exc:
                raise NetworkError(f"the network agent is gone: {exc.strerror or exc}") from None
        if not data:
            raise NetworkError("the network agent is gone")
        body = json.loads(data)
        if "error" in body:
            raise NetworkError(body["error"])
        netns_fd = fds[0]
        os.set_inheritable(netns_fd, False)
        return NetworkLease(body["index"], netns_fd, body["host_ifname"], body["address"], body["gateway"])

    def release(self, lease: NetworkLease) -> None:
        """Give LEASE back once its RUN has ended."""
        os.close(lease.netns_fd)
        with self._lock:
            if self._sock is not None:
                try:
                    self._sock.send(b"R%d" % lease.index)
                except OSError:
                    pass  # the agent is gone, and gave everything back as it went

    def close(self) -> None:
        """Wait until the agent has given every lease back; it then leaves the NAT table and exits
        on its own (holding the table's user lock until it has), off build-image's critical path.
        An agent that never leased anything (warmed for a RUN that was cached after all) is not
        waited for: what it made is its own, and it gives it back as it exits."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            sock, self._sock = self._sock, None
            agent, self._agent = self._agent, None
            leased = self._leased
        if sock is None:
            return
        threading.Thread(target=agent.wait, name="build-image-network-reaper", daemon=True).start()
        try:
            sock.send(b"C")
            if leased:
                sock.settimeout(30)
                sock.recv(1)
        except OSError:
            pass  # gone already: leases go back when it ends, whatever ended it
        finally:
            sock.close()

    def _start(self) -> None:
        if self._sock is not None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            env = {**os.environ, "BUILD_IMAGE_NETWORK_FD": str(theirs.fileno()),
                   "BUILD_IMAGE_NETWORK_DIR": self._state_dir, "BUILD_IMAGE_NETWORK_READY": str(self._ready),
                   "BUILD_IMAGE_NETWORK_PATH": os.pathsep.join(_agent_path())}
            # -S: the agent finds its modules on our own path, and skips site's .pth files (tens of
            # ms before its first lease). -P and cwd "/": a `builder` directory where the user runs
            # build-image must not shadow ours.
            self._agent = subprocess.Popen([sys.executable, "-S", "-P", "-c", _AGENT_BOOT], env=env,
                                           pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, cwd="/",
                                           start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock = ours


_AGENT_BOOT = ("import os, sys; sys.path[:0] = os.environ['BUILD_IMAGE_NETWORK_PATH'].split(os.pathsep); "
               "from builder.executor.network import _agent_main; _agent_main()")


def _agent_path() -> list[str]:
    """Where the agent finds builder (an editable install maps it through a finder that -S skips)
    and pyroute2: our package's parent directory, then our own sys.path."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return [here, *(p for p in sys.path if p and os.path.isabs(p) and p != here)]


# ---- files a RUN sees --------------------------------------------------------------------------

def resolv_conf(network: str, host_text: str | None = None) -> str:
    """/etc/resolv.conf for a RUN: the host's; for the default network without loopback or IPv6
    nameservers (unreachable from the container), falling back as Docker does."""
    if host_text is None:
        host_text = _read("/etc/resolv.conf")
    if network != "default":
        return host_text
    kept = _reachable_nameservers(host_text)
    if kept is not None:
        return kept
    upstream = _read(_SYSTEMD_RESOLV_CONF)
    if upstream and (kept := _reachable_nameservers(upstream)) is not None:
        return kept
    others = [line for line in host_text.splitlines() if not line.strip().startswith("nameserver")]
    return "\n".join(others + [f"nameserver {ns}" for ns in FALLBACK_NAMESERVERS]) + "\n"


def _reachable_nameservers(text: str) -> str | None:
    lines, servers = [], 0
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                address = ipaddress.ip_address(words[1].split("%")[0])
            except ValueError:
                continue
            if address.is_loopback or address.version == 6:
                continue
            servers += 1
        lines.append(line)
    return "\n".join(lines) + "\n" if servers else None


def hosts_file(hostname: str, extra_hosts: tuple[tuple[str, str], ...] = ()) -> str:
    """/etc/hosts as BuildKit writes it, then one line per ``--add-host``."""
    text = (f"127.0.0.1\tlocalhost {hostname}\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n")
    return text + "".join(f"{address}\t{name}\n" for name, address in extra_hosts)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


if __name__ == "__main__":
    _agent_main()
