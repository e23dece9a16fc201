"""actors/dag.py: the run order (graphlib, ties by node id) and the cycle people are told."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.dag import CycleError, inputs_of, topological_order


def test_ready_nodes_go_in_id_order_breadth_first() -> None:
    inputs = inputs_of("abcde", [("b", "d"), ("a", "c"), ("a", "e"), ("c", "d")])
    # a and b are ready at once; a makes c and e ready, b nothing; c makes d ready.
    assert topological_order(inputs) == ["a", "b", "c", "e", "d"]


@given(st.permutations(["a", "b", "c", "z"]))
def test_a_cycle_is_told_the_same_way_whatever_the_order_of_the_nodes(names: list[str]) -> None:
    edges = [("a", "b"), ("b", "c"), ("c", "a"), ("c", "z")]
    with pytest.raises(CycleError) as refused:
        topological_order(inputs_of(names, edges))
    assert refused.value.nodes == ["b", "c", "a"]
    assert str(refused.value) == (
        "the plan has a cycle (b → c → a → b): remove one of these edges and run it again"
    )


@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7)), max_size=20))
def test_every_edge_goes_forward_or_a_real_cycle_is_named(pairs: list[tuple[int, int]]) -> None:
    names = [f"n{i}" for i in range(8)]
    edges = [(f"n{s}", f"n{t}") for s, t in pairs if s != t]
    try:
        order = topological_order(inputs_of(names, edges))
    except CycleError as error:
        cycle = error.nodes
        assert all((cycle[i], cycle[(i + 1) % len(cycle)]) in edges for i in range(len(cycle)))
        assert cycle[-1] == min(cycle)
        return
    position = {node: i for i, node in enumerate(order)}
    assert sorted(order) == names
    assert all(position[s] < position[t] for s, t in edges)
