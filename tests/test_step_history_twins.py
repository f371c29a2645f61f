"""The step history's disk store and its memory twin read back what they were given, and an
unreadable or foreign history is "no previous build", never an error."""

from __future__ import annotations

import os

import pytest

from builder.cache.step_history import (BuildHistory, DiskStepHistory, MemoryStepHistory, StepRecord,
                                        history_identity)


def _history(identity: str) -> BuildHistory:
    steps = (StepRecord("build", 2, "COPY src/ /app/", 3, "sha256:" + "1" * 64,
                        {"reads": [{"paths": ["src/"], "files": {"src/a.py": "ab" * 32, "src/": "cd" * 32}}]}),
             StepRecord("build", 3, "RUN make", 4, "sha256:" + "2" * 64,
                        {"env": ["PATH=/bin", "VERSION=1.0"], "args": ["VERSION"], "settings": {"WORKDIR": "/"}}))
    return BuildHistory(identity, "/ctx/Dockerfile", "build", "unclamped", steps)


@pytest.fixture(params=["disk", "memory"])
def store(request, tmp_path):
    return DiskStepHistory(str(tmp_path / "steps")) if request.param == "disk" else MemoryStepHistory()


def test_round_trip_and_replace(store):
    identity = history_identity("/ctx/Dockerfile", "build")
    assert store.get(identity) is None
    first = _history(identity)
    store.put(first)
    again = store.get(identity)
    assert again == first and [s.facts for s in again.steps] == [s.facts for s in first.steps]
    second = BuildHistory(identity, "/ctx/Dockerfile", "build", "clamped:0", first.steps[:1])
    store.put(second)
    assert store.get(identity).steps == second.steps and store.get(identity).timestamps == "clamped:0"


def test_identity_is_per_dockerfile_and_target():
    names = {history_identity("/a/Dockerfile", None), history_identity("/a/Dockerfile", "build"),
             history_identity("/b/Dockerfile", None)}
    assert len(names) == 3 and history_identity("/a/Dockerfile", None) == history_identity("/a/Dockerfile", "")


def test_damaged_or_other_format_is_no_history(tmp_path):
    disk = DiskStepHistory(str(tmp_path / "steps"))
    identity = history_identity("/ctx/Dockerfile", None)
    disk.put(_history(identity))
    path = os.path.join(disk.root, identity + ".json")
    with open(path, "w") as f:
        f.write('{"format": 1, "steps": [')
    assert disk.get(identity) is None
    with open(path, "w") as f:
        f.write('{"format": 99, "steps": []}')
    assert disk.get(identity) is None
    memory = MemoryStepHistory()
    memory.texts[identity] = b"not json"
    assert memory.get(identity) is None
