"""The plan memo (builder.plan): a plan read back is the plan the converter made, for every
real-world Dockerfile of the shared corpus; an entry is used only while its inputs hold."""

from __future__ import annotations

import json
import os

import pytest

from builder.errors import ParseError, SolveError
from builder.plan import BuildPlan, PlanMemo
from builder.plumbing import tagged
from tests.test_convert import plan as convert_text
from tests.test_parse_corpus import FILES

def _classes():
    from builder.plan import _record_classes

    return _record_classes()


def _round_trip(plan: BuildPlan) -> BuildPlan:
    names = {cls: name for name, cls in _classes().items()}
    data = json.loads(json.dumps(tagged.encode(plan, names)))
    return tagged.decode(data, _classes())


def _same(a: BuildPlan, b: BuildPlan) -> None:
    assert b == a
    assert [v.digest for v in b.vertices] == [v.digest for v in a.vertices]
    assert b.target.config == a.target.config and b.target.steps == a.target.steps
    assert b.names == a.names and b.lines == a.lines and b.stage_of == a.stage_of


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_every_corpus_plan_reads_back_the_same(path):
    try:
        made, _ = convert_text(path.read_text(errors="replace"))
    except (ParseError, SolveError):
        pytest.skip("this Dockerfile does not convert without its context or build args")
    _same(made, _round_trip(made))


def test_a_shared_input_stays_one_object():
    made, _ = convert_text("FROM busybox AS a\nRUN make\nFROM busybox\nCOPY --from=a /x /x\nCOPY --from=a /y /y\n")
    back = _round_trip(made)
    by_digest = {v.digest: v for v in back.vertices}
    inputs = [i for v in back.vertices for i in v.inputs if i is not None]
    assert len(inputs) > len({i.digest for i in inputs})       # some vertex is the input of two
    assert all(i is by_digest[i.digest] for i in inputs)       # and it is one object, not copies


def test_the_memo_gives_the_plan_while_its_bases_hold(tmp_path):
    made, _ = convert_text("FROM busybox\nRUN echo hi\n")
    memo = PlanMemo(str(tmp_path))
    memo.put("k" * 64, made, [("busybox", "linux/amd64", "sha256:" + "1" * 64)])
    same_base = {("busybox", "linux/amd64"): "sha256:" + "1" * 64}
    _same(made, memo.get("k" * 64, lambda n, p: same_base.get((n, p))))
    assert memo.get("k" * 64, lambda n, p: "sha256:" + "2" * 64) is None    # the tag moved
    assert memo.get("k" * 64, lambda n, p: None) is None                    # no longer resolvable
    assert memo.get("x" * 64, lambda n, p: same_base.get((n, p))) is None   # other inputs


@pytest.mark.parametrize("damage", [
    lambda e: e.update(format=99),
    lambda e: e.update(code="another converter"),
    lambda e: e.update(final="sha256:" + "0" * 64),
    lambda e: e["plan"].update(r="builtins:object"),
    lambda e: e.update(plan={"r": "os:system", "i": 0, "f": {"command": "true"}}),
    lambda e: e.update(plan=[1, 2]),
])
def test_a_damaged_or_foreign_entry_is_planned_afresh(tmp_path, damage):
    made, _ = convert_text("FROM busybox\nRUN echo hi\n")
    memo = PlanMemo(str(tmp_path))
    memo.put("k" * 64, made, [])
    path = os.path.join(memo.dir, "k" * 64 + ".json")
    with open(path) as f:
        entry = json.load(f)
    damage(entry)
    with open(path, "w") as f:
        json.dump(entry, f)
    assert memo.get("k" * 64, lambda n, p: None) is None


def test_a_truncated_entry_is_planned_afresh(tmp_path):
    made, _ = convert_text("FROM busybox\nRUN echo hi\n")
    memo = PlanMemo(str(tmp_path))
    memo.put("k" * 64, made, [])
    path = os.path.join(memo.dir, "k" * 64 + ".json")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    assert memo.get("k" * 64, lambda n, p: None) is None


def test_tagged_values_keep_their_types():
    value = {"t": (1, "a", None), "l": [True, 2.5], 3: {b"k": (b"\x00\xff",)}, ("x", 1): []}
    assert tagged.decode(json.loads(json.dumps(tagged.encode(value)))) == value
    with pytest.raises(TypeError):
        tagged.encode(object())
    with pytest.raises(ValueError):
        tagged.decode({"q": 1})
