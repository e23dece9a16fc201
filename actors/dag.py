"""Plan DAG ordering (pure): Kahn's topological sort, upstream closure, cycle reports."""

from __future__ import annotations

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
    """Kahn's algorithm; ties broken by node id so a run's order is reproducible."""
    indegree = {node: len(sources) for node, sources in inputs.items()}
    outputs: dict[str, list[str]] = {node: [] for node in inputs}
    for node, sources in inputs.items():
        for source in sources:
            outputs[source].append(node)
    ready = deque(sorted(node for node, degree in indegree.items() if degree == 0))
    order: list[str] = []
    while ready:
        node = ready.popleft()
        order.append(node)
        for target in sorted(outputs[node]):
            indegree[target] -= 1
            if indegree[target] == 0:
                ready.append(target)
    if len(order) != len(inputs):
        raise CycleError(find_cycle({n: s for n, s in inputs.items() if n not in order}))
    return order


def find_cycle(inputs: Mapping[str, Sequence[str]]) -> list[str]:
    """One cycle among nodes that Kahn's algorithm could not order."""
    start = min(inputs)
    path: list[str] = []
    position: dict[str, int] = {}
    node = start
    while node not in position:
        position[node] = len(path)
        path.append(node)
        node = next(source for source in inputs[node] if source in inputs)
    cycle = path[position[node] :]
    cycle.reverse()  # follow edges source → target
    return cycle
