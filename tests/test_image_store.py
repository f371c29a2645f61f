"""The local image store index: names to manifest digests, shared safely between processes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from builder.errors import StoreError
from builder.image.names import ImageStore

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64


def test_tag_resolve_list_and_untag(tmp_path):
    store = ImageStore(str(tmp_path))
    assert store.resolve("docker.io/library/app:latest") is None and store.list() == []

    store.tag("docker.io/library/app:latest", A)
    store.tag("docker.io/library/app:1.0", A)
    store.tag("docker.io/library/app@" + B, B)
    assert store.resolve("docker.io/library/app:latest") == A
    assert store.resolve("docker.io/library/app@" + B) == B
    assert store.list() == [("docker.io/library/app:1.0", A), ("docker.io/library/app:latest", A),
                            ("docker.io/library/app@" + B, B)]
    assert store.names_for(A) == ["docker.io/library/app:1.0", "docker.io/library/app:latest"]

    store.tag("docker.io/library/app:latest", B)  # a rebuild moves the tag
    assert store.resolve("docker.io/library/app:latest") == B
    assert store.names_for(A) == ["docker.io/library/app:1.0"]

    assert store.untag("docker.io/library/app:1.0") == A
    assert store.untag("docker.io/library/app:1.0") is None
    assert store.names_for(A) == []


def test_index_persists_and_lives_under_images(tmp_path):
    ImageStore(str(tmp_path)).tag("localhost/app:dev", A)
    assert ImageStore(str(tmp_path)).resolve("localhost/app:dev") == A
    assert sorted(os.listdir(tmp_path / "images")) == ["index.json", "lock"]  # no temp files left


def test_bad_input_and_corrupt_index_are_reported(tmp_path):
    store = ImageStore(str(tmp_path))
    with pytest.raises(StoreError, match="digest"):
        store.tag("app:latest", "sha256:short")
    with pytest.raises(StoreError, match="name"):
        store.tag("", A)
    (tmp_path / "images" / "index.json").write_text("{not json")
    with pytest.raises(StoreError, match="corrupt"):
        store.resolve("app:latest")


TAGGER = """
import sys
from builder.image.names import ImageStore
store = ImageStore(sys.argv[1])
for i in range(int(sys.argv[3])):
    store.tag(f"localhost/{sys.argv[2]}:{i}", "sha256:" + format(i, "064x"))
"""


def test_concurrent_taggers_lose_nothing(tmp_path):
    count = 60
    procs = [subprocess.Popen([sys.executable, "-c", TAGGER, str(tmp_path), who, str(count)])
             for who in ("first", "second")]
    assert [p.wait() for p in procs] == [0, 0]
    names = dict(ImageStore(str(tmp_path)).list())
    assert len(names) == 2 * count
    assert names["localhost/first:59"] == names["localhost/second:59"] == "sha256:" + format(59, "064x")
