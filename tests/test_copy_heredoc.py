"""COPY/ADD <<EOF: inline files, expanded unless the delimiter is quoted, into a file or a directory."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.support.images import build_image, write_context

pytestmark = [pytest.mark.root, pytest.mark.overlay]

DOCKERFILE = """\
FROM scratch
ARG name=world
WORKDIR /dest
COPY <<EOF single
single file
EOF
COPY <<EOF <<EOF2 double/
first file
EOF
second file
EOF2
COPY <<EOF /dest/c1
Hello ${name}!
EOF
COPY <<'EOF' /dest/c2
Hello ${name}!
EOF
COPY <<"EOF" /dest/q1
Hello '${name}'!
EOF
COPY <<-EOF /dest/tabs
\tindented
\t\ttwice
EOF
COPY --chmod=0755 <<EOF /dest/run.sh
#!/bin/sh
EOF
ADD --chown=7:8 <<EOF plain.txt /dest/mixed/
added
EOF
"""


def test_heredoc_files(tmp_path, store_root):
    context = write_context(tmp_path / "ctx", {"Dockerfile": DOCKERFILE, "plain.txt": "from context\n"})
    out = str(tmp_path / "out")
    build_image("--root", store_root, context, "-o", f"type=local,dest={out}")

    def read(path: str) -> str:
        with open(f"{out}/dest/{path}") as f:
            return f.read()

    assert read("single") == "single file\n"
    assert read("double/EOF") == "first file\n" and read("double/EOF2") == "second file\n"
    assert read("c1") == "Hello world!\n"
    assert read("c2") == "Hello ${name}!\n"                 # a quoted delimiter: no expansion
    assert read("q1") == "Hello '${name}'!\n"
    assert read("tabs") == "indented\ntwice\n"              # <<- strips leading tabs
    assert os.stat(f"{out}/dest/single").st_mode & 0o7777 == 0o644
    assert os.stat(f"{out}/dest/run.sh").st_mode & 0o7777 == 0o755
    assert read("mixed/EOF") == "added\n" and read("mixed/plain.txt") == "from context\n"
    st = os.stat(f"{out}/dest/mixed/EOF")
    assert (st.st_uid, st.st_gid) == (7, 8)


@pytest.mark.tools
def test_heredoc_history_and_cache(tmp_path, store_root):
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM scratch\nCOPY <<EOF <<EOF2 /d/\na\nEOF\nb\nEOF2\n"})
    archive = str(tmp_path / "image.tar")
    build_image("--root", store_root, context, "-o", f"type=oci,dest={archive}")
    config = json.loads(subprocess.run(["skopeo", "inspect", "--config", f"oci-archive:{archive}"],
                                       check=True, capture_output=True, text=True).stdout)
    assert config["history"][-1]["created_by"] == "COPY <<EOF <<EOF2 /d/ # buildkit"
    second = build_image("--root", store_root, "--progress", "plain", context)
    assert "CACHED" in second.stderr
