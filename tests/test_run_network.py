"""RUN --network: none (the default here, and what `default` means: there is no network to give)
sees only loopback; host shares the host's interfaces."""

from __future__ import annotations

import pytest

from tests.support.images import write_context
from tests.test_run_mount import build, builds, output_lines


def _host_interfaces() -> list[str]:
    with open("/proc/net/dev") as f:
        return sorted(line.split(":")[0].strip() for line in f.readlines()[2:])


@builds
def test_network_modes(store_root, busybox_registry, tmp_path):
    list_interfaces = "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort"
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM {busybox_registry.reference}
RUN --network=host {list_interfaces}
RUN --network=none {list_interfaces}
RUN --network=default {list_interfaces}
RUN {list_interfaces}
"""})
    result = build(context, store_root)
    assert output_lines(result.stderr, "RUN --network=host") == _host_interfaces()
    assert len(_host_interfaces()) > 1  # otherwise host and none look alike
    for step in ("RUN --network=none", "RUN --network=default", f"RUN {list_interfaces}"):
        assert output_lines(result.stderr, step) == ["lo"]


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
