"""The compiled projection gives the same bytes as graphql-core's executor."""

from __future__ import annotations

from typing import Any

import pytest
from graphql import parse

from gateway.operations import SelectionCache, SubscriptionSelection
from gateway.schema import make_schema

SCHEMA = make_schema()

DATASOURCE_EVENT = {
    "projectId": 3,
    "nodeId": "datasource_1",
    "nodeType": "DataSourceNode",
    "datasourceExecution": {
        "dataSourceId": 1,
        "filename": "a.csv",
        "status": "active",
        "processedAt": "2026-11-29T17:00:00.000Z",
        "executionState": "completed",
        "errorMessage": None,
    },
    "datasetExecution": {
        "dataSetId": 1,
        "filename": "a.csv",
        "status": "active",
        "processedAt": "2026-11-29T17:00:00.000Z",
        "executionState": "completed",
        "errorMessage": None,
    },
    "graphExecution": None,
    "timestamp": "2026-11-29T17:00:00.001Z",
    "sequence": 9,
}
GRAPH_EVENT = {
    **DATASOURCE_EVENT,
    "nodeId": "graph",
    "nodeType": "MergeNode",
    "datasourceExecution": None,
    "datasetExecution": None,
    "graphExecution": {
        "graphId": 2,
        "nodeCount": 5,
        "edgeCount": 4,
        "executionState": "error",
        "computedDate": None,
        "errorMessage": "edge 'e1' points to missing node 'x'",
    },
}

DOCUMENTS = [
    # the frontend's current document (issue 15): datasetExecution, annotations
    """subscription NodeExecutionStatusChanged($projectId: Int!) {
      nodeExecutionStatusChanged(projectId: $projectId) { projectId nodeId nodeType
        datasetExecution { dataSetId filename status processedAt executionState errorMessage }
        graphExecution { graphId nodeCount edgeCount executionState computedDate errorMessage
      annotations }
        timestamp } }""",
    # the frontend's verbatim document
    """subscription NodeExecutionStatusChanged($projectId: Int!) {
      nodeExecutionStatusChanged(projectId: $projectId) {
        projectId nodeId nodeType
        datasourceExecution { dataSourceId filename status processedAt executionState errorMessage }
        graphExecution { graphId nodeCount edgeCount executionState computedDate errorMessage }
        timestamp
      } }""",
    # aliases, __typename, repeated and merged fields
    """subscription($projectId: Int!) { ev: nodeExecutionStatusChanged(projectId: $projectId) {
        __typename id: nodeId nodeId sequence
        datasourceExecution { state: executionState __typename }
        datasourceExecution { status }
        graphExecution { nodeCount } } }""",
    # fragments, inline fragments, directives with variables
    """subscription($projectId: Int!, $withGraph: Boolean!, $skipTs: Boolean = true) {
        nodeExecutionStatusChanged(projectId: $projectId) {
          ...Base
          ... on NodeExecutionStatusEvent { sequence }
          ... @include(if: $withGraph) { graphExecution { ...Graph } }
          timestamp @skip(if: $skipTs)
        } }
      fragment Base on NodeExecutionStatusEvent { projectId nodeType }
      fragment Graph on GraphExecutionMetadata { graphId errorMessage @include(if: $withGraph) }
    """,
]


@pytest.mark.parametrize("document", DOCUMENTS)
@pytest.mark.parametrize("event", [DATASOURCE_EVENT, GRAPH_EVENT])
@pytest.mark.parametrize("with_graph", [True, False])
def test_projection_matches_execute(document: str, event: dict[str, Any], with_graph: bool) -> None:
    variables: dict[str, Any] = {"projectId": 3}
    if "$withGraph" in document:
        variables["withGraph"] = with_graph
    selection = SubscriptionSelection(SCHEMA, document, parse(document), variables, None)
    assert selection._projection is not None, "this document is compiled"
    assert selection.render(event) == selection.execute(event)


def test_documents_it_cannot_compile_fall_back_to_execute() -> None:
    document = "subscription { nodeExecutionStatusChanged(projectId: 1) { nodeId } }"
    selection = SubscriptionSelection(SCHEMA, document, parse(document), {"bad": 1}, None)
    assert selection.render(DATASOURCE_EVENT) == selection.execute(DATASOURCE_EVENT)


def test_selection_cache_shares_one_selection_per_document_and_variables() -> None:
    cache = SelectionCache(size=2)
    document = DOCUMENTS[0]
    parsed = parse(document)
    # Equal texts from different messages are different str objects: still one selection.
    first = cache.get(SCHEMA, "".join([document]), parsed, {"projectId": 3}, None)
    again = cache.get(SCHEMA, document[:10] + document[10:], parsed, {"projectId": 3}, None)
    other = cache.get(SCHEMA, document, parsed, {"projectId": 4}, None)
    assert again is first
    assert other is not first and other.key != first.key
    assert len(cache) == 2
    # Bounded: the least recently used entry goes; its holders keep their selection.
    third = cache.get(SCHEMA, document, parsed, {"projectId": 5}, None)
    assert len(cache) == 2
    assert third is cache.get(SCHEMA, document, parsed, {"projectId": 5}, None)
    assert cache.get(SCHEMA, document, parsed, {"projectId": 3}, None) is not first
