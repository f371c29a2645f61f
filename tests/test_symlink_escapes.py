"""Symlink escapes through COPY and bind mounts: links in the context or in a stage that point at
a host directory (absolutely, or climbing with `..`), used as a COPY source, a COPY or WORKDIR
destination, or a bind mount's source. Blocked means the host directory is unchanged and its
marker's content appears in no output and no progress; the build may fail with a one-line error
(no errno, no store path) or succeed with the link resolved inside its own root, as BuildKit does
(WORKDIR and COPY make the directories a link inside the root points at). The run's figure: "symlink escapes: N/N blocked"."""

from __future__ import annotations

import os

import pytest

from tests.support.images import build_image, write_context
from tests.test_run_mount import builds

MARKER = "host-only-marker-93c1e07a"


def _attempts(base: str, host: str) -> dict[str, str]:
    up = "../" * 16 + host.lstrip("/")
    stage = f"FROM {base} AS stage\nRUN ln -s {host} /abs && ln -s {up} /up && mkdir /d && ln -s {host} /d/w\n"
    return {
        "COPY context link, absolute": "FROM scratch\nCOPY out-abs/marker /x\n",
        "COPY context link, relative": "FROM scratch\nCOPY out-rel/marker /x\n",
        "COPY the context link itself": "FROM scratch\nCOPY out-abs /x\n",
        "COPY the whole context": "FROM scratch\nCOPY . /ctx\n",
        "COPY --from a stage link, absolute": stage + "FROM scratch\nCOPY --from=stage /abs/marker /x\n",
        "COPY --from a stage link, climbing": stage + "FROM scratch\nCOPY --from=stage /up/marker /x\n",
        "COPY into a link to the host": stage + "FROM stage\nCOPY file /abs/\nCOPY file /up/planted\n",
        "WORKDIR through a link to the host": stage + "FROM stage\nWORKDIR /d/w/sub\nCOPY file .\nRUN echo x > here\n",
        "bind a context link": f"FROM {base}\nRUN --mount=type=bind,source=out-abs,target=/m cat /m/marker\n",
        "bind a stage link": stage + f"FROM {base}\nRUN --mount=from=stage,source=/abs,target=/m cat /m/marker\n",
        "follow a link in a bound context": f"FROM {base}\nRUN --mount=type=bind,target=/c cat /c/out-abs/marker\n",
        "write through a link in a rw bind": f"FROM {base}\n"
                                             "RUN --mount=type=bind,target=/c,rw echo planted > /c/out-abs/planted\n",
        "write through a climbing link in a rw bind": f"FROM {base}\n"
                                                      "RUN --mount=type=bind,target=/c,rw echo planted > /c/out-rel/p\n",
    }


def _host_state(host: str) -> list[tuple[str, str]]:
    return sorted((name, open(os.path.join(host, name)).read()) for name in os.listdir(host))


def _tree_text(root: str) -> str:
    found = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    found.append(f.read().decode(errors="replace"))
    return "\n".join(found)


@builds
def test_every_symlink_escape_is_blocked(tmp_path, store_root, busybox_registry, record_property):
    host = str(tmp_path / "hostdir")
    os.mkdir(host)
    with open(os.path.join(host, "marker"), "w") as f:
        f.write(MARKER)
    before = _host_state(host)
    outcomes = []
    for i, (name, dockerfile) in enumerate(_attempts(busybox_registry.reference, host).items()):
        context = write_context(tmp_path / f"ctx{i}", {"Dockerfile": dockerfile, "file": "from the context\n"})
        os.symlink(host, os.path.join(context, "out-abs"))
        os.symlink(os.path.relpath(host, context), os.path.join(context, "out-rel"))
        out = str(tmp_path / f"out{i}")
        proc = build_image("--root", store_root, "--progress", "plain", context, "-o", f"type=local,dest={out}",
                           check=False)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
        leaked = MARKER in proc.stderr or MARKER in proc.stdout or (os.path.isdir(out) and MARKER in _tree_text(out))
        clean_failure = proc.returncode == 0 or (len(errors) == 1 and "Traceback" not in proc.stderr
                                                 and "Errno" not in errors[0] and store_root not in errors[0])
        blocked = not leaked and _host_state(host) == before and clean_failure
        outcomes.append((name, blocked, proc.returncode, errors))
    blocked = sum(1 for _, ok, _, _ in outcomes if ok)
    figure = f"symlink escapes: {blocked}/{len(outcomes)} blocked"
    record_property("figure", figure)
    print(figure)
    assert blocked == len(outcomes), [o for o in outcomes if not o[1]]
    # the attempts did run: most fail to find the marker, the rest build inside their own root
    succeeded = {name for name, _, code, _ in outcomes if code == 0}
    assert {"COPY the whole context", "COPY into a link to the host", "WORKDIR through a link to the host"} <= succeeded
