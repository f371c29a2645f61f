"""RUN --mount=type=bind and type=tmpfs end to end, and the --mount syntax (BuildKit's rules)."""

from __future__ import annotations

import gzip
import json
import os
import tarfile

import pytest

from builder.errors import ParseError
from builder.grammar.runmount import MountSyntaxError, RunMount, parse_mount
from tests.support.images import build_image, step_lines, write_context


def builds(test):
    """Marks a test that runs real builds against the busybox registry."""
    for mark in (pytest.mark.root, pytest.mark.overlay, pytest.mark.registry):
        test = mark(test)
    return test


# ---- helpers shared by the test_run_mount*.py files ----------------------------------------------

def build(context, root, *extra, check=True):
    return build_image("--root", root, "--progress", "plain", *extra, context, check=check)


def output_lines(progress: str, step: str) -> list[str]:
    """What the RUN whose progress name contains STEP printed, one item per line."""
    number, lines = None, []
    for line in progress.splitlines():
        head, _, rest = line.partition(" ")
        if rest.startswith("[") and step in rest:
            number = head
        elif number is not None and head == number and rest[:1].isdigit():
            lines.append(rest.partition(" ")[2])
    return lines


def oci_archive_blobs(archive: str) -> dict[str, bytes]:
    """Every blob of an OCI archive, by digest, layers decompressed."""
    blobs = {}
    with tarfile.open(archive) as tf:
        for member in tf.getmembers():
            if member.isfile() and member.name.startswith("blobs/"):
                data = tf.extractfile(member).read()
                blobs[member.name.rpartition("/")[2]] = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    return blobs


def added_layer_entries(archive: str) -> list[list[str]]:
    """The entry names of each layer the build added on top of the busybox base layer."""
    with tarfile.open(archive) as tf:
        index = json.load(tf.extractfile("index.json"))
        manifest_digest = index["manifests"][0]["digest"].partition(":")[2]
        manifest = json.load(tf.extractfile(f"blobs/sha256/{manifest_digest}"))
        layers = []
        for layer in manifest["layers"][1:]:
            blob = tf.extractfile(f"blobs/sha256/{layer['digest'].partition(':')[2]}")
            with tarfile.open(fileobj=blob) as layer_tar:
                layers.append(layer_tar.getnames())
    return layers


# ---- syntax -------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("target=/src", RunMount(type="bind", target="/src", readonly=True)),
    ("type=bind,from=build,src=/out,dst=/in,rw", RunMount(target="/in", source="/out", from_="build",
                                                          readonly=False)),
    ("type=bind,target=/x,readwrite=true", RunMount(target="/x", readonly=False)),
    ("type=cache,target=/root/.cache,sharing=LOCKED,mode=0700,uid=1000,gid=1000",
     RunMount(type="cache", target="/root/.cache", readonly=False, sharing="locked", mode=0o700, uid=1000,
              gid=1000)),
    ("type=cache,target=/c,ro", RunMount(type="cache", target="/c", readonly=True)),
    ("type=tmpfs,target=/t,size=64m", RunMount(type="tmpfs", target="/t", readonly=False, size=64 << 20)),
    ("type=secret,id=tok,required,env=TOKEN", RunMount(type="secret", id="tok", required=True, env="TOKEN")),
    ('"type=ssh",id=gh,required=false', RunMount(type="ssh", id="gh")),
])
def test_parse_mount_applies_buildkits_defaults(value, expected):
    assert parse_mount(value) == expected


@pytest.mark.parametrize("value, message", [
    ("type=volume,target=/x", 'unsupported mount type "volume"'),
    ("target=/x,x=y", "unexpected key 'x' in 'x=y'"),
    ("target=/x,bogus", "invalid field 'bogus' must be a key=value pair"),
    ("type=cache,target=/x,required", "unexpected key 'required' for mount type 'cache'"),
    ("type=bind,target=/x,size=1g", "unexpected key 'size' for mount type 'bind'"),
    ("type=bind,target=/x,mode=0755", 'mode not allowed for "bind" type mounts'),
    ("type=cache,target=/x,sharing=sometimes", 'unsupported sharing value "sometimes"'),
    ("type=bind,target=/x,sharing=locked", "invalid cache sharing set for bind mount"),
    ("type=cache,target=/x,uid=me", "invalid value me for uid"),
    ("type=bind,target=/x,rw=perhaps", "invalid value for rw: perhaps"),
    ("type=secret,from=build,id=x", "secret mount should not have a from"),
    ("type=secret,required", "invalid secret mount. one of source, target required"),
    ("type=secret,id=a,source=b", "both source and id can't be set"),
    ("type=ssh,source=/key", "ssh does not support source"),
])
def test_parse_mount_rejects_what_buildkit_rejects(value, message):
    with pytest.raises(MountSyntaxError) as caught:
        parse_mount(value)
    assert str(caught.value) == message


def test_malformed_mount_names_the_dockerfile_line(tmp_path):
    from builder.convert import convert
    from builder.grammar import parse_dockerfile

    dockerfile = parse_dockerfile("FROM scratch\nENV A=1\nRUN --mount=type=bind,target=/x,colour=red true\n",
                                  "Dockerfile")
    with pytest.raises(ParseError) as caught:
        convert(dockerfile, resolver=None)
    assert caught.value.line == 3
    assert "unexpected key 'colour' in 'colour=red'" in str(caught.value)


def test_mount_target_cannot_be_the_root(tmp_path):
    from builder.convert import convert
    from builder.grammar import parse_dockerfile

    dockerfile = parse_dockerfile("FROM scratch\nRUN --mount=type=tmpfs,target=/ true\n", "Dockerfile")
    with pytest.raises(ParseError, match='invalid mount target "/"'):
        convert(dockerfile, resolver=None)


# ---- bind -----------------------------------------------------------------------------------

@builds
def test_bind_from_context_and_stage_are_readable_and_leave_no_trace(store_root, busybox_registry,
                                                                     tmp_path):
    context = write_context(tmp_path / "ctx", {
        "Dockerfile": f"""\
FROM {busybox_registry.reference} AS build
RUN mkdir -p /out && echo built > /out/artifact

FROM {busybox_registry.reference}
WORKDIR /app
RUN --mount=target=src,source=pkg cat src/data.txt > /app/from-context
RUN --mount=type=bind,from=build,source=/out,target=/mnt/build cat /mnt/build/artifact > /app/from-stage
RUN --mount=target=/ro,source=pkg touch /ro/attempt 2>/dev/null || echo read-only > /app/ro
""",
        "pkg/data.txt": "from the context\n",
        "ignored.txt": "x",
    })
    archive = str(tmp_path / "image.tar")
    build(context, store_root, "-o", f"type=oci,dest={archive}")

    layers = added_layer_entries(archive)
    # WORKDIR, then one file per RUN: no mount point (app/src, mnt/build, ro) left behind
    assert layers[1:] == [["app", "app/from-context"], ["app", "app/from-stage"], ["app", "app/ro"]]
    blobs = oci_archive_blobs(archive)
    layer_data = b"".join(blobs.values())
    assert b"from the context\n" in layer_data and b"built\n" in layer_data and b"read-only\n" in layer_data


@builds
def test_rw_bind_writes_are_discarded(store_root, busybox_registry, tmp_path):
    context = write_context(tmp_path / "ctx", {
        "Dockerfile": f"""\
FROM {busybox_registry.reference}
RUN --mount=type=bind,target=/work,rw echo changed > /work/input.txt && rm /work/other.txt && \\
    echo written > /work/new.txt && cat /work/input.txt && ls /work
RUN --mount=type=bind,target=/work ls /work && cat /work/input.txt
""",
        "input.txt": "original\n",
        "other.txt": "kept\n",
    })
    archive = str(tmp_path / "image.tar")
    result = build(context, store_root, "-o", f"type=oci,dest={archive}")

    assert output_lines(result.stderr, "RUN --mount=type=bind,target=/work,rw") == [
        "changed", "Dockerfile", "input.txt", "new.txt"]
    assert output_lines(result.stderr, "RUN --mount=type=bind,target=/work ls") == [
        "Dockerfile", "input.txt", "other.txt", "original"]
    with open(os.path.join(context, "input.txt")) as f:
        assert f.read() == "original\n"
    assert not os.path.exists(os.path.join(context, "new.txt"))
    assert added_layer_entries(archive) == [[], []]


@builds
def test_bind_from_context_hides_dockerignored_files_and_keys_on_content(store_root, busybox_registry,
                                                                        tmp_path):
    context = write_context(tmp_path / "ctx", {
        "Dockerfile": f"FROM {busybox_registry.reference}\nRUN --mount=target=/c find /c | sort\n",
        ".dockerignore": "secret.key\n",
        "secret.key": "private",
        "src/main.c": "int main;\n",
    })
    first = build(context, store_root)
    assert output_lines(first.stderr, "RUN --mount") == [
        "/c", "/c/.dockerignore", "/c/Dockerfile", "/c/src", "/c/src/main.c"]

    with open(os.path.join(context, "secret.key"), "w") as f:
        f.write("changed, but ignored")
    assert any("RUN --mount" in s for s in step_lines(build(context, store_root).stderr, "CACHED"))

    with open(os.path.join(context, "src/main.c"), "w") as f:
        f.write("int main(void);\n")
    assert any("RUN --mount" in s for s in step_lines(build(context, store_root).stderr, "DONE"))


# ---- tmpfs ----------------------------------------------------------------------------------

@builds
def test_tmpfs_is_writable_sized_and_not_in_the_layer(store_root, busybox_registry, tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM {busybox_registry.reference}
RUN --mount=type=tmpfs,target=/scratch/space,size=2m echo data > /scratch/space/f && \\
    grep /scratch/space /proc/mounts | cut -d' ' -f3 && df -k /scratch/space | tail -1 | tr -s ' ' | cut -d' ' -f2
"""})
    archive = str(tmp_path / "image.tar")
    result = build(context, store_root, "-o", f"type=oci,dest={archive}")
    assert output_lines(result.stderr, "RUN --mount=type=tmpfs") == ["tmpfs", "2048"]
    assert added_layer_entries(archive) == [[]]


@builds
def test_bind_source_symlinks_resolve_inside_the_source_not_on_the_host(store_root, busybox_registry, tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM {busybox_registry.reference} AS base
RUN mkdir /seed && ln -s /etc /seed/etc-link && ln -s ../../../.. /seed/up

FROM {busybox_registry.reference}
RUN --mount=from=base,source=/seed/etc-link,target=/e --mount=from=base,source=/seed/up,target=/u \\
    ls /e && ls -d /u/seed
"""})
    lines = output_lines(build(context, store_root).stderr, "ls /e")
    # The stage's own /etc, not the host's; ".." stops at the stage's root.
    assert "passwd" in lines and "/u/seed" in lines
    assert os.path.exists("/etc/debian_version") and "debian_version" not in lines
