"""RUN's network: `default` (its own namespace, a veth to the host, NAT), `none` (loopback only) and
`host` (the host's stack, behind --allow network.host); --network, --add-host; nothing left behind."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time

import pytest

from builder.executor.network import NetworkLease, hosts_file, resolv_conf
from tests.support.images import write_context
from tests.support.network import leftovers, nat_table_exists
from tests.test_run_mount import build, builds, output_lines

LIST_INTERFACES = "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort"


def _host_interfaces() -> list[str]:
    """The host's interfaces but the veths of RUNs (other tests' builds come and go meanwhile)."""
    with open("/proc/net/dev") as f:
        return sorted(name for name in (line.split(":")[0].strip() for line in f.readlines()[2:])
                      if not name.startswith("bi-"))


def _without_veths(names: list[str]) -> list[str]:
    return [name for name in names if not name.startswith("bi-")]


def _eth0_address(lines: list[str]) -> str:
    """The inet address `ip -4 -o addr show eth0` printed."""
    return next(word for line in lines for word in line.split() if "/" in word and "." in word).split("/")[0]


# ---- modes -------------------------------------------------------------------------------------

@builds
def test_network_modes(store_root, busybox_registry, tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM {busybox_registry.reference}
RUN --network=host {LIST_INTERFACES}
RUN --network=none {LIST_INTERFACES}
RUN --network=default {LIST_INTERFACES}
RUN {LIST_INTERFACES}
"""})
    result = build(context, store_root, "--allow", "network.host")
    assert _without_veths(output_lines(result.stderr, "RUN --network=host")) == _host_interfaces()
    assert len(_host_interfaces()) > 2  # otherwise host and default could look alike
    assert output_lines(result.stderr, "RUN --network=none") == ["lo"]
    for step in ("RUN --network=default", f"RUN {LIST_INTERFACES}"):
        assert output_lines(result.stderr, step) == ["eth0", "lo"]
    assert leftovers() == []


@builds
def test_default_network_has_an_address_a_route_and_the_hosts_resolvers(store_root, busybox_registry, tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM {busybox_registry.reference}
RUN ip -4 -o addr show eth0 && ip route
RUN cat /sys/class/net/lo/flags /sys/class/net/eth0/operstate
RUN cat /etc/resolv.conf
"""})
    result = build(context, store_root)
    lines = output_lines(result.stderr, "RUN ip -4 -o addr")
    address = ipaddress.ip_address(_eth0_address(lines))
    assert address in ipaddress.ip_network("10.89.0.0/16")
    gateway = next(line.split()[2] for line in lines if line.startswith("default via"))
    assert ipaddress.ip_address(gateway) == address - 1
    flags, state = output_lines(result.stderr, "RUN cat /sys/class/net/lo/flags")
    assert int(flags, 16) & 0x1 and state == "up"
    expected = resolv_conf("default").splitlines()
    assert output_lines(result.stderr, "RUN cat /etc/resolv.conf") == [line for line in expected if line]


@builds
def test_cli_network_none_applies_to_every_run_without_its_own(store_root, busybox_registry, tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM {busybox_registry.reference}
RUN {LIST_INTERFACES}
RUN --network=default {LIST_INTERFACES} && echo default
"""})
    result = build(context, store_root, "--network", "none")
    assert output_lines(result.stderr, f"RUN {LIST_INTERFACES}") == ["lo"]
    assert output_lines(result.stderr, "echo default") == ["lo", "default"]


@builds
def test_run_network_host_needs_the_entitlement_before_any_step_runs(store_root, busybox_registry, tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM {busybox_registry.reference}
RUN echo first-step-ran
RUN --network=host true
"""})
    result = build(context, store_root, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "ERROR: network.host is not allowed: [3/3] RUN --network=host true needs --allow network.host")
    assert "first-step-ran" not in result.stderr


@builds
def test_cli_network_host_grants_host_networking(store_root, busybox_registry, tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"FROM {busybox_registry.reference}\nRUN {LIST_INTERFACES}\n"})
    result = build(context, store_root, "--network", "host")
    assert _without_veths(output_lines(result.stderr, "RUN tail")) == _host_interfaces()


@pytest.mark.parametrize("flags, message", [
    (("--network", "bridge"), 'ERROR: network mode "bridge" not supported (use default, none or host)'),
    (("--allow", "network.everything"), 'ERROR: invalid entitlement "network.everything" (supported: network.host, security.insecure)'),
    (("--add-host", "nocolon"), 'ERROR: bad format for add-host: "nocolon" (use NAME:IP)'),
    (("--add-host", "db:not-an-ip"), 'ERROR: invalid IP address in add-host: "not-an-ip"'),
])
def test_bad_network_flags_are_one_line_errors(tmp_path, flags, message):
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM scratch\n"})
    result = build(context, str(tmp_path / "store"), *flags, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [message]


# ---- /etc/hosts and /etc/resolv.conf ---------------------------------------------------------------

@builds
def test_add_host_lines_reach_every_run(store_root, busybox_registry, tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM {busybox_registry.reference}
RUN cat /etc/hosts && ip route | grep default
RUN --network=none cat /etc/hosts && echo none
"""})
    result = build(context, store_root, "--add-host", "db.internal:10.1.2.3", "--add-host", "v6=fd00::7",
                   "--add-host", "gw:host-gateway")
    lines = output_lines(result.stderr, "RUN cat /etc/hosts")
    assert lines[:2] == ["127.0.0.1\tlocalhost buildkitsandbox", "::1\tlocalhost ip6-localhost ip6-loopback"]
    assert lines[2:4] == ["10.1.2.3\tdb.internal", "fd00::7\tv6"]
    gateway = lines[5].split()[2]
    assert lines[4] == f"{gateway}\tgw"   # host-gateway: the host's end of this RUN's link
    assert output_lines(result.stderr, "echo none")[2:4] == ["10.1.2.3\tdb.internal", "fd00::7\tv6"]


def test_hosts_file_is_buildkits_plus_extra_hosts():
    assert hosts_file("box", (("a", "1.2.3.4"),)) == (
        "127.0.0.1\tlocalhost box\n::1\tlocalhost ip6-localhost ip6-loopback\n1.2.3.4\ta\n")


def test_resolv_conf_drops_loopback_and_ipv6_servers_for_the_default_network():
    host = "search example.org\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver fd00::1\noptions ndots:2\n"
    assert resolv_conf("default", host) == "search example.org\nnameserver 10.0.0.2\noptions ndots:2\n"
    assert resolv_conf("none", host) == host
    assert resolv_conf("host", host) == host


def test_resolv_conf_falls_back_like_docker_when_only_loopback_remains(monkeypatch):
    import builder.executor.network as network

    monkeypatch.setattr(network, "_SYSTEMD_RESOLV_CONF", "/nonexistent/resolv.conf")
    assert resolv_conf("default", "nameserver 127.0.0.53\noptions edns0\n") == (
        "options edns0\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n")


def test_lease_addresses_are_disjoint_slash30_blocks():
    assert NetworkLease.addresses(0) == ("10.89.0.1", "10.89.0.2")
    assert NetworkLease.addresses(1) == ("10.89.0.5", "10.89.0.6")
    assert NetworkLease.addresses(16383) == ("10.89.255.253", "10.89.255.254")


# ---- allocation across steps and processes ---------------------------------------------------------

@builds
def test_concurrent_steps_and_builds_get_distinct_addresses(busybox_registry, tmp_path):
    """Two build-image processes on two store roots, each running 4 steps at once."""
    steps = "".join(f"FROM {busybox_registry.reference} AS s{i}\nRUN ip -4 -o addr show eth0 > /s{i} && cat /s{i} && sleep 1 && echo s{i}\n"
                    for i in range(4))
    steps += f"FROM {busybox_registry.reference}\n" + "".join(f"COPY --from=s{i} /s{i} /\n" for i in range(4))
    context = write_context(tmp_path / "ctx", {"Dockerfile": steps})
    procs = [subprocess.Popen([sys.executable, "-m", "builder.cli", "--root", str(tmp_path / f"store{n}"),
                               "--progress", "plain", "--jobs", "4", context],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    addresses = [_eth0_address(output_lines(err, f"echo s{i}")) for _, err in outputs for i in range(4)]
    assert len(set(addresses)) == 8, addresses
    assert leftovers() == []


# ---- nothing is left behind --------------------------------------------------------------------------

@builds
def test_failed_run_leaves_no_network_objects(store_root, busybox_registry, tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"FROM {busybox_registry.reference}\nRUN ip link && exit 3\n"})
    result = build(context, store_root, check=False)
    assert result.returncode == 1 and "exit code: 3" in result.stderr
    assert "eth0" in result.stderr
    assert leftovers() == []


def _children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(p) for p in f.read().split()]
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _wait_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return  # ended; waiting for PID 1 to reap it
        except FileNotFoundError:
            return
        time.sleep(0.05)
    raise AssertionError(f"the network agent {pid} outlived its build")


def _start_sleeping_build(context: str, root: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "builder.cli", "--root", root, "--progress", "plain", context],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if "sleeping-now" in line:
            return proc
    raise AssertionError(f"the build ended before its RUN started (exit {proc.wait()})")


@builds
@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_interrupted_build_leaves_no_network_objects(store_root, busybox_registry, tmp_path, how):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM {busybox_registry.reference}
RUN echo sleeping-now && sleep 60
"""})
    proc = _start_sleeping_build(context, store_root)
    agents = [pid for pid in _children(proc.pid) if "builder.executor.network" in _cmdline(pid)]
    assert len(agents) == 1
    proc.send_signal(getattr(signal, how))
    proc.wait(timeout=30)
    _wait_gone(agents[0])  # the network agent gives everything back and ends with its build
    if how == "SIGINT":
        assert proc.returncode == 130
    # Killed or not, the agent saw its build end: namespaces, veths, leases and the NAT table are gone.
    assert leftovers() == []
    again = write_context(tmp_path / "again", {"Dockerfile": f"FROM {busybox_registry.reference}\nRUN true\n"})
    build(again, store_root)  # and the store and the network still work
    assert leftovers() == []


@builds
def test_nat_table_is_removed_when_the_last_user_leaves(store_root, busybox_registry, tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"FROM {busybox_registry.reference}\nRUN true\n"})
    build(context, store_root, "--no-cache")
    # Another test's build may hold the table right now; what must never happen is a table nobody holds.
    assert leftovers() == []
    assert not nat_table_exists() or os.path.exists("/run/build-image/network/nat.users")


# ---- the real outside world (package registries only) ------------------------------------------------

@builds
@pytest.mark.network
def test_default_network_reaches_the_debian_registry_through_nat(store_root, busybox_registry, tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM {busybox_registry.reference}
RUN wget -q -O- http://deb.debian.org/debian/dists/bookworm/Release | head -n 3
"""})
    lines = output_lines(build(context, store_root).stderr, "RUN wget")
    assert "Origin: Debian" in lines


@builds
def test_loopback_is_up_without_a_network(store_root, busybox_registry, tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM {busybox_registry.reference}
RUN --network=none cat /sys/class/net/lo/operstate /sys/class/net/lo/flags
"""})
    lines = output_lines(build(context, store_root).stderr, "RUN --network=none")
    assert int(lines[1], 16) & 0x1  # IFF_UP


def test_invalid_network_mode_names_the_line():
    from builder.errors import ParseError
    from builder.grammar import parse_dockerfile

    with pytest.raises(ParseError) as caught:
        parse_dockerfile("FROM scratch\nRUN --network=bridge true\n", "Dockerfile")
    assert caught.value.line == 2
    assert 'invalid network mode "bridge"' in str(caught.value)


@builds
def test_a_machine_without_nftables_gets_a_clear_error(store_root, busybox_registry, tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"FROM {busybox_registry.reference}\nRUN true\n"})
    done = subprocess.run([sys.executable, "-m", "builder.cli", "--root", store_root, "--progress", "plain", context],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "ERROR: the default network needs nftables (the nft command); install it or use --network=none")
    assert leftovers() == []


@builds
def test_a_builder_directory_where_build_image_runs_does_not_shadow_the_network_agent(store_root, busybox_registry,
                                                                                      tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "build-image")
    if not os.access(script, os.X_OK):
        pytest.skip("the build-image console script is not installed beside this interpreter")
    (tmp_path / "builder").mkdir()
    (tmp_path / "builder" / "__init__.py").write_text("raise SystemExit('the wrong builder package')\n")
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"FROM {busybox_registry.reference}\nRUN ip -4 -o addr show eth0\n"})
    done = subprocess.run([script, "--root", store_root, "--progress", "plain", context], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "10.89." in done.stderr


@builds
def test_an_agent_warmed_for_runs_that_all_hit_the_cache_leaves_quietly(store_root, busybox_registry, tmp_path):
    """A changed comment misses the unchanged-rebuild record, so the network agent is started, but
    the RUN's own record hits: build-image then does not wait for the agent, which gives back what
    it made on its own, printing nothing."""
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"FROM {busybox_registry.reference}\nRUN true\n"})
    build(context, store_root)
    (tmp_path / "ctx" / "Dockerfile").write_text(f"# changed\nFROM {busybox_registry.reference}\nRUN true\n")
    done = subprocess.run([sys.executable, "-m", "builder.cli", "--root", store_root, "--progress", "plain", context],
                          capture_output=True, text=True, timeout=120)  # the agent shares stderr: read to its end
    assert done.returncode == 0, done.stderr[-2000:]
    assert "CACHED" in done.stderr and "Traceback" not in done.stderr
    assert leftovers() == []


def test_the_agent_imports_only_pyroute2s_netlink_messages():
    """Not IPRoute (asyncio, ssl, multiprocessing: 140-220 ms before the first lease), nor the
    package's __init__ (every pyroute2 module)."""
    done = subprocess.run([sys.executable, "-c", (
        "import sys; from builder.executor.rtnetlink import Rtnetlink; Rtnetlink().close(); "
        "print(*[m in sys.modules for m in ('pyroute2.netlink.rtnl.ifinfmsg', 'pyroute2.iproute', "
        "'pyroute2.ndb.main', 'pyroute2.ipdb', 'asyncio')])")],
        capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["True", "False", "False", "False", "False"], done.stderr
