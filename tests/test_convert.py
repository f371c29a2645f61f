"""Planning: instructions become a vertex graph; unneeded stages are pruned, identical steps shared."""

from __future__ import annotations

import pytest

from builder.convert import convert
from builder.errors import ParseError, SolveError
from builder.grammar import parse_dockerfile
from builder.image.config import ImageConfig, RuntimeConfig
from builder.llb import ExecOp, FileOp, ImageSource


class FakeResolver:
    """Base images without a registry: every name resolves to a fixed digest and config."""

    def __init__(self):
        self.asked: list[str] = []

    def resolve_config(self, ref: str, platform: str):
        self.asked.append(ref)
        return f"docker.io/library/{ref}@sha256:{'a' * 64}", ImageConfig(config=RuntimeConfig(env=("A=1",)))


def plan(text: str, **options):
    resolver = FakeResolver()
    return convert(parse_dockerfile(text), resolver=resolver, **options), resolver


def test_unneeded_stages_are_not_planned_nor_resolved():
    p, resolver = plan("FROM alpine AS unused\nRUN exit 1\nFROM busybox AS used\nRUN echo hi\n")
    assert resolver.asked == ["busybox"]
    assert not any(isinstance(v.op, ExecOp) and "exit 1" in v.op.args[-1] for v in p.vertices)


def test_identical_steps_in_two_stages_are_one_vertex():
    p, _ = plan("FROM busybox AS a\nRUN make\nFROM busybox AS b\nRUN make\n"
                "FROM busybox\nCOPY --from=a /x /a\nCOPY --from=b /x /b\n")
    runs = [v for v in p.vertices if isinstance(v.op, ExecOp)]
    assert len(runs) == 1                               # a and b are the same vertex
    assert len([v for v in p.vertices if isinstance(v.op, ImageSource)]) == 1
    assert len([v for v in p.vertices if isinstance(v.op, FileOp)]) == 2


def test_vertices_come_inputs_first_with_stable_digests():
    text = "FROM busybox\nENV X=1\nRUN echo $X\nWORKDIR /app\nCOPY . .\n"
    first, _ = plan(text)
    second, _ = plan(text)
    assert [v.digest for v in first.vertices] == [v.digest for v in second.vertices]
    position = {v: i for i, v in enumerate(first.vertices)}
    assert all(position[i] < position[v] for v in first.vertices for i in v.inputs if i is not None)
    run = next(v for v in first.vertices if isinstance(v.op, ExecOp))
    assert "X=1" in run.op.env and "A=1" in run.op.env  # base image ENV and the stage's ENV


def test_build_args_change_the_digest_only_where_used():
    text = "FROM busybox\nRUN echo first\nARG V\nRUN echo $V\n"
    one, _ = plan(text, build_args={"V": "1"})
    two, _ = plan(text, build_args={"V": "2"})
    digests_one = [v.digest for v in one.vertices]
    digests_two = [v.digest for v in two.vertices]
    assert digests_one[:-1] == digests_two[:-1] and digests_one[-1] != digests_two[-1]


def test_unknown_target_and_bad_mount_are_errors():
    with pytest.raises(SolveError, match='target stage "nope" could not be found'):
        plan("FROM busybox AS a\n", target="nope")
    with pytest.raises(ParseError, match=r"Dockerfile:2: "):
        plan("FROM busybox\nRUN --mount=type=bogus echo\n")


def test_plan_order_is_networkx_lexicographical_topological_sort():
    """The solve order is networkx's lexicographical_topological_sort by digest, through
    builder.llb.order's graph walk; checked on random graphs against networkx called directly."""
    import random
    from dataclasses import dataclass

    import networkx as nx

    from builder.llb.order import solve_order

    @dataclass(frozen=True, eq=False)
    class Node:
        digest: str
        inputs: tuple

    for trial in range(300):
        rng = random.Random(trial)
        nodes = []
        for _ in range(rng.randint(1, 25)):
            inputs = tuple(rng.choice(nodes) if nodes and rng.random() < 0.8 else None
                           for _ in range(rng.randint(0, 3)))
            nodes.append(Node(f"sha256:{rng.getrandbits(64):016x}", inputs))
        final = Node("sha256:final", tuple(nodes[-3:]))
        graph = nx.DiGraph()
        graph.add_node(final)
        todo = [final]
        while todo:
            node = todo.pop()
            for dep in node.inputs:
                if dep is not None:
                    if dep not in graph:
                        todo.append(dep)
                    graph.add_edge(dep, node)
        expected = tuple(nx.lexicographical_topological_sort(graph, key=lambda n: n.digest))
        assert solve_order(final) == expected, trial
