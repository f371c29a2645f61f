"""The order a plan's vertices are solved and numbered in: every vertex the final one needs, inputs
before the vertices that read them, ties broken by digest (so the order, and with it the progress
numbering, is the same in every build of the same graph).

networkx computes it (its lexicographical topological sort). Its import costs about 80 ms, which
is a seventh of a cold 20-step build, so the answer can be kept in a memo between builds. The key is
the final vertex's digest: a vertex digest covers its inputs' digests, so it names the whole graph,
and the order is a pure function of that graph. A remembered order is used only after checking that
it is an order of this very graph (the same vertices, each after its inputs); a damaged or forged
memo entry can cost a recomputation, never a step that runs before its inputs.
"""

from __future__ import annotations

from typing import Protocol

from builder.llb.ops import Vertex


class OrderMemo(Protocol):
    def get(self, final_digest: str) -> list[str] | None: ...

    def put(self, final_digest: str, order: list[str]) -> None: ...


def solve_order(final: Vertex | None, memo: OrderMemo | None = None) -> tuple[Vertex, ...]:
    if final is None:
        return ()
    needed = _needed(final)
    if memo is not None:
        remembered = memo.get(final.digest)
        if remembered is not None:
            order = _as_order(remembered, needed)
            if order is not None:
                return order
    order = _sorted(needed)
    if memo is not None:
        memo.put(final.digest, [v.digest for v in order])
    return order


def _needed(final: Vertex) -> dict[str, Vertex]:
    """Every vertex FINAL reads, itself included, by digest."""
    needed: dict[str, Vertex] = {}
    todo = [final]
    while todo:
        vertex = todo.pop()
        if vertex.digest in needed:
            continue
        needed[vertex.digest] = vertex
        todo.extend(dep for dep in vertex.inputs if dep is not None)
    return needed


def _sorted(needed: dict[str, Vertex]) -> tuple[Vertex, ...]:
    import networkx as nx

    graph = nx.DiGraph()
    for vertex in needed.values():
        graph.add_node(vertex)
        for dep in vertex.inputs:
            if dep is not None:
                graph.add_edge(dep, vertex)
    return tuple(nx.lexicographical_topological_sort(graph, key=lambda v: v.digest))


def _as_order(digests: list[str], needed: dict[str, Vertex]) -> tuple[Vertex, ...] | None:
    """DIGESTS as vertices, if they are exactly NEEDED with every input before its reader."""
    if not isinstance(digests, list) or len(digests) != len(needed):
        return None
    placed: set[str] = set()
    order = []
    for digest in digests:
        vertex = needed.get(digest) if isinstance(digest, str) else None
        if vertex is None or digest in placed:
            return None
        if any(dep is not None and dep.digest not in placed for dep in vertex.inputs):
            return None
        placed.add(digest)
        order.append(vertex)
    return tuple(order)
