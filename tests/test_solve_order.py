"""The solve order: inputs first, ties by digest, as networkx computes it; a memo entry is used
only when it is an order of the very graph being planned."""

from __future__ import annotations

import pytest

from builder.llb import ExecOp, Vertex
from builder.llb.ops import MergeOp
from builder.llb.order import solve_order


class DictMemo:
    def __init__(self):
        self.entries: dict[str, object] = {}
        self.gets = 0

    def get(self, final_digest):
        self.gets += 1
        return self.entries.get(final_digest)

    def put(self, final_digest, order):
        self.entries[final_digest] = list(order)


def run(command: str, *inputs: Vertex | None) -> Vertex:
    return Vertex(ExecOp(args=("/bin/sh", "-c", command)), tuple(inputs) or (None,))


@pytest.fixture
def diamond() -> Vertex:
    root = run("root")
    left, right = run("left", root), run("right", root)
    return Vertex(MergeOp(), (left, right))


def assert_inputs_first(order):
    seen = set()
    for vertex in order:
        assert all(dep is None or dep.digest in seen for dep in vertex.inputs)
        seen.add(vertex.digest)


def test_inputs_come_first_and_ties_go_by_digest(diamond):
    order = solve_order(diamond)
    assert_inputs_first(order)
    assert order[0].op.args[-1] == "root" and order[-1] == diamond
    middle = order[1:3]
    assert [v.digest for v in middle] == sorted(v.digest for v in middle)


def test_the_memo_gives_the_same_order_the_second_time(diamond):
    memo = DictMemo()
    first = solve_order(diamond, memo)
    assert memo.entries == {diamond.digest: [v.digest for v in first]}
    assert solve_order(diamond, memo) == first and memo.gets == 2


@pytest.mark.parametrize("damage", [
    lambda order: order[::-1],                       # a reader before its inputs
    lambda order: order[:-1],                        # a vertex missing
    lambda order: order + order[:1],                 # one twice
    lambda order: ["sha256:" + "0" * 64] + order[1:],  # a vertex of another graph
    lambda order: {"not": "a list"},
    lambda order: [1, 2, 3, 4],
])
def test_a_damaged_memo_entry_is_recomputed_not_obeyed(diamond, damage):
    memo = DictMemo()
    expected = solve_order(diamond, memo)
    memo.entries[diamond.digest] = damage(list(memo.entries[diamond.digest]))
    order = solve_order(diamond, memo)
    assert order == expected
    assert memo.entries[diamond.digest] == [v.digest for v in expected]   # and repaired


def test_another_valid_order_in_the_memo_is_only_a_renumbering(diamond):
    # The memo cannot make a build wrong: any order with inputs first is a correct solve order.
    memo = DictMemo()
    order = list(solve_order(diamond, memo))
    swapped = [order[0], order[2], order[1], order[3]]
    memo.entries[diamond.digest] = [v.digest for v in swapped]
    assert list(solve_order(diamond, memo)) == swapped
    assert_inputs_first(swapped)


def test_no_final_vertex_is_an_empty_order():
    assert solve_order(None, DictMemo()) == ()
