"""Plan DAG ordering (pure): topological order (graphlib), upstream closure, cycle reports."""

from __future__ import annotations

import graphlib
from collections import deque
from collections.abc import Iterable, Mapping, Sequence


class CycleError(ValueError):
    """The plan has a cycle; `nodes` are the node ids on it, in order."""

    def __init__(self, nodes: Sequence[str]) -> None:
        self.nodes = list(nodes)
        path = " → ".join([*self.nodes, self.nodes[0]]) if self.nodes else "?"
        super().__init__(
            f"the plan has a cycle ({path}): remove one of these edges and run it again"
        )


def inputs_of(nodes: Iterable[str], edges: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """node → the nodes with an edge into it, in edge order."""
    inputs: dict[str, list[str]] = {node: [] for node in nodes}
    for source, target in edges:
        if source in inputs and target in inputs and source not in inputs[target]:
            inputs[target].append(source)
    return inputs


def upstream_closure(target: str, inputs: Mapping[str, Sequence[str]]) -> set[str]:
    """The target and everything it depends on."""
    seen = {target}
    stack = [target]
    while stack:
        for source in inputs.get(stack.pop(), ()):
            if source not in seen:
                seen.add(source)
                stack.append(source)
    return seen


def topological_order(inputs: Mapping[str, Sequence[str]]) -> list[str]:
    """The standard library's topological sort, ties broken by node id so that a run's
    order is reproducible: the nodes ready at the start in id order, then, as each node
    is taken, the nodes it made ready, in id order (Kahn's algorithm, breadth first)."""
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for node in sorted(inputs):  # sorted: the cycle reported does not depend on dict order
        sorter.add(node, *sorted(inputs[node]))
    try:
        sorter.prepare()
    except graphlib.CycleError as error:
        raise CycleError(told_from_smallest(error.args[1][:-1])) from None
    order: list[str] = []
    ready = deque(sorted(sorter.get_ready()))
    while ready:
        node = ready.popleft()
        order.append(node)
        sorter.done(node)
        ready.extend(sorted(sorter.get_ready()))
    return order


def told_from_smallest(cycle: Sequence[str]) -> list[str]:
    """A cycle (following edges source → target) rotated so that it ends with its
    smallest node id: the same cycle is always told the same way (the loop back to the
    first node is added by CycleError)."""
    last = cycle.index(min(cycle))
    return [*cycle[last + 1 :], *cycle[: last + 1]]
