"""The order a plan's vertices are solved and numbered in: every vertex the final one needs, inputs
before the vertices that read them, ties broken by digest (so the order, and with it the progress
numbering, is the same in every build of the same graph).

It is networkx's lexicographical topological sort, computed without networkx (Kahn's algorithm with
the ready vertices in a heap; networkx's import costs 80-600 ms here), and kept in a memo between
builds. The key is the final vertex's digest: a vertex digest covers its inputs' digests, so it
names the whole graph, and the order is a pure function of that graph. A remembered order is used only after checking that
it is an order of this very graph (the same vertices, each after its inputs); a damaged or forged
memo entry can cost a recomputation, never a step that runs before its inputs.
"""

from __future__ import annotations

import heapq
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
    """NEEDED, inputs first; among the vertices whose inputs are all placed, the smallest digest
    goes next (what networkx's lexicographical_topological_sort gives)."""
    readers: dict[str, list[Vertex]] = {}
    waiting: dict[str, int] = {}
    for digest, vertex in needed.items():
        inputs = {dep.digest for dep in vertex.inputs if dep is not None}
        waiting[digest] = len(inputs)
        for dep in inputs:
            readers.setdefault(dep, []).append(vertex)
    ready = [(digest, vertex) for digest, vertex in needed.items() if waiting[digest] == 0]
    heapq.heapify(ready)          # digests are unique keys here: vertices are never compared
    order = []
    while ready:
        digest, vertex = heapq.heappop(ready)
        order.append(vertex)
        for reader in readers.get(digest, ()):
            waiting[reader.digest] -= 1
            if waiting[reader.digest] == 0:
                heapq.heappush(ready, (reader.digest, reader))
    return tuple(order)


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
