"""Step names in the plain progress of real builds, as BuildKit's plain output has them (checked
against Docker 20.10's BuildKit on this machine): a script that greps one finds the same lines."""

from __future__ import annotations

import re

import pytest

from tests.support.images import build_image, write_context

pytestmark = [pytest.mark.root, pytest.mark.overlay, pytest.mark.registry]


def steps(stderr: str) -> list[str]:
    """Each step's title, in the order the steps start."""
    seen, titles = set(), []
    for line in stderr.splitlines():
        match = re.match(r"#(\d+) (\[.*)$", line)
        if match and match.group(1) not in seen:
            seen.add(match.group(1))
            titles.append(match.group(2))
    return titles


def plain(store_root, context, *args) -> str:
    return build_image("--root", store_root, "--progress", "plain", *args, context).stderr


def test_a_single_stage_counts_without_a_stage_name(tmp_path, store_root, busybox_registry):
    base = busybox_registry.reference
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"FROM {base} AS only\nCOPY a.txt /a\nRUN cat /a\n",
                                               "a.txt": "a\n", ".dockerignore": "*.md\n"})
    out = plain(store_root, context)
    titles = steps(out)
    assert titles[:3] == ["[internal] load build definition from Dockerfile", "[internal] load .dockerignore",
                          f"[internal] load metadata for {base}"]
    numbered = [t for t in titles[3:] if not t.startswith("[internal]")]
    assert numbered[0].startswith(f"[1/3] FROM {base}@sha256:")
    assert numbered[1:] == ["[2/3] COPY a.txt /a", "[3/3] RUN cat /a"]
    # The context is read by the COPY: its step comes before it (BuildKit numbers it after the FROM).
    assert titles.index("[internal] load build context") < titles.index("[2/3] COPY a.txt /a")
    assert re.search(r"^#1 transferring dockerfile: \d+B done$", out, re.M)
    assert re.search(r"^#2 transferring context: 5B done$", out, re.M)      # the 5 bytes of .dockerignore


def test_positions_are_padded_to_the_width_of_the_total(tmp_path, store_root, busybox_registry):
    runs = "".join(f"RUN echo {n}\n" for n in range(1, 12))
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"FROM {busybox_registry.reference}\n{runs}"})
    titles = steps(plain(store_root, context))
    assert titles[1] == "[internal] load .dockerignore" and "load build context" not in " ".join(titles)
    assert [t.split("]")[0] + "]" for t in titles[3:]] == [f"[{n:2d}/12]" for n in range(1, 13)]


def test_several_stages_are_named_by_name_or_index(tmp_path, store_root, busybox_registry):
    base = busybox_registry.reference
    context = write_context(tmp_path / "ctx", {
        "Dockerfile": f"FROM {base} AS base\nRUN echo 1 > /x\nFROM {base}\nCOPY --from=base /x /x\nRUN cat /x\n"})
    titles = steps(plain(store_root, context))
    assert titles[3].startswith(f"[base 1/2] FROM {base}@")     # the two FROMs are one vertex
    assert titles[4:] == ["[base 2/2] RUN echo 1 > /x", "[stage-1 2/3] COPY --from=base /x /x",
                          "[stage-1 3/3] RUN cat /x"]
