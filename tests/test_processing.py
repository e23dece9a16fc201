"""Tests of actors/processing.py: parsing, merging, hashing and transforms.

Every error a user can cause must come back as a ProcessingError whose message points at the
right place (row, column, array index, transform); the tests assert on those parts of the
message rather than its whole wording, so the hints can improve without churning the tests.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import re
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.processing import (
    DATA_TYPES,
    FILE_FORMATS,
    TRANSFORM_KINDS,
    GraphData,
    ProcessingError,
    apply_transforms,
    merge_graphs,
    parse_data_source,
    source_hash,
    validate_format,
)

# ---------------------------------------------------------------------------------------------
# Helpers


def node(node_id: str, **fields: Any) -> dict[str, Any]:
    """A node in the normalised shape, with defaults for every optional field."""
    return {
        "id": node_id,
        "label": fields.pop("label", node_id.upper()),
        "layer": fields.pop("layer", None),
        "is_partition": fields.pop("is_partition", False),
        "belongs_to": fields.pop("belongs_to", None),
        "weight": fields.pop("weight", None),
        "comment": fields.pop("comment", None),
        "attrs": fields.pop("attrs", {}),
    }


def edge(edge_id: str, source: str, target: str, **fields: Any) -> dict[str, Any]:
    """An edge in the normalised shape."""
    return {
        "id": edge_id,
        "source": source,
        "target": target,
        "label": fields.pop("label", None),
        "layer": fields.pop("layer", None),
        "weight": fields.pop("weight", None),
        "comment": fields.pop("comment", None),
        "attrs": fields.pop("attrs", {}),
    }


def layer(layer_id: str, **fields: Any) -> dict[str, Any]:
    """A layer in the normalised shape."""
    return {
        "id": layer_id,
        "label": fields.pop("label", layer_id.title()),
        "background_color": fields.pop("background_color", None),
        "text_color": fields.pop("text_color", None),
        "border_color": fields.pop("border_color", None),
        "attrs": fields.pop("attrs", {}),
    }


def error_of(content: str, file_format: str, data_type: str) -> str:
    """The message of the ProcessingError that parsing `content` must raise."""
    with pytest.raises(ProcessingError) as info:
        parse_data_source(content, file_format, data_type)
    return str(info.value)


def json_error(document: Any) -> str:
    """The message for a json graph document (given as Python data or raw text)."""
    text = document if isinstance(document, str) else orjson.dumps(document).decode()
    return error_of(text, "json", "graph")


def json_error_free(document: Any) -> GraphData:
    """Parse a json graph document given as Python data; it must be valid."""
    return parse_data_source(orjson.dumps(document).decode(), "json", "graph")


def merge_error(*graphs: GraphData) -> str:
    with pytest.raises(ProcessingError) as info:
        merge_graphs(graphs)
    return str(info.value)


def transform_error(config: Any, graph: GraphData | None = None) -> str:
    with pytest.raises(ProcessingError) as info:
        apply_transforms(graph or GraphData(), config)
    return str(info.value)


# ---------------------------------------------------------------------------------------------
# validate_format


@pytest.mark.parametrize(
    ("file_format", "data_type"),
    [("csv", "nodes"), ("csv", "edges"), ("csv", "layers"), ("tsv", "nodes"), ("tsv", "edges")]
    + [("tsv", "layers"), ("json", "graph")],
)
def test_validate_format_accepts_every_valid_pair(file_format: str, data_type: str) -> None:
    validate_format(file_format, data_type)


def test_constants() -> None:
    assert FILE_FORMATS == ("csv", "tsv", "json")
    assert DATA_TYPES == ("nodes", "edges", "layers", "graph")
    assert TRANSFORM_KINDS == (
        "keep_layers",
        "drop_layers",
        "drop_isolated_nodes",
        "drop_partitions",
    )


def test_validate_format_unknown_format_names_field_and_allowed_values() -> None:
    with pytest.raises(ProcessingError) as info:
        validate_format("xlsx", "nodes")
    assert str(info.value).startswith("fileFormat 'xlsx' is not supported: use csv, tsv or json")


def test_validate_format_unknown_data_type() -> None:
    with pytest.raises(ProcessingError) as info:
        validate_format("csv", "vertices")
    assert "dataType 'vertices' is not supported: use nodes, edges, layers or graph" in str(
        info.value
    )


def test_validate_format_upper_case_gets_a_hint() -> None:
    with pytest.raises(ProcessingError, match="lower case"):
        validate_format("CSV", "nodes")
    with pytest.raises(ProcessingError, match="dataType 'Nodes'.*lower case"):
        validate_format("csv", "Nodes")


def test_validate_format_non_string_values() -> None:
    with pytest.raises(ProcessingError, match="fileFormat None is not supported"):
        validate_format(None, "nodes")  # type: ignore[arg-type]
    with pytest.raises(ProcessingError, match=r"dataType \['nodes'\] is not supported"):
        validate_format("csv", ["nodes"])  # type: ignore[arg-type]


@pytest.mark.parametrize("file_format", ["csv", "tsv"])
def test_validate_format_table_format_cannot_carry_graph(file_format: str) -> None:
    with pytest.raises(ProcessingError) as info:
        validate_format(file_format, "graph")
    message = str(info.value)
    assert f"dataType 'graph' cannot be read from a {file_format} file" in message
    assert "json" in message


@pytest.mark.parametrize("data_type", ["nodes", "edges", "layers"])
def test_validate_format_json_carries_only_graph(data_type: str) -> None:
    with pytest.raises(ProcessingError) as info:
        validate_format("json", data_type)
    message = str(info.value)
    assert f"dataType '{data_type}' cannot be read from a json file" in message
    assert "csv or tsv" in message


def test_parse_checks_format_first() -> None:
    assert "fileFormat 'xml'" in error_of("<a/>", "xml", "nodes")
    assert "dataType 'graph' cannot be read from a csv file" in error_of("id\n", "csv", "graph")
    assert "dataType 'edges' cannot be read from a json file" in error_of("{}", "json", "edges")


def test_processing_error_is_a_value_error() -> None:
    assert issubclass(ProcessingError, ValueError)


def test_parse_rejects_bytes_as_a_programming_error() -> None:
    with pytest.raises(TypeError):
        parse_data_source(b"id,label\n", "csv", "nodes")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# csv / tsv: nodes


def test_csv_nodes_all_columns() -> None:
    content = (
        "id,label,layer,is_partition,belongs_to,weight,comment\n"
        "g1,Group,infra,true,,,\n"
        "n1,Web server,infra,false,g1,3,front door\n"
        "n2,Database,data,0,g1,2.5,\n"
    )
    graph = parse_data_source(content, "csv", "nodes")
    assert graph == GraphData(
        nodes=(
            node("g1", label="Group", layer="infra", is_partition=True),
            node("n1", label="Web server", layer="infra", belongs_to="g1", weight=3)
            | {"comment": "front door"},
            node("n2", label="Database", layer="data", belongs_to="g1", weight=2.5),
        )
    )
    assert graph.edges == () and graph.layers == ()
    assert isinstance(graph.nodes[1]["weight"], int)
    assert isinstance(graph.nodes[2]["weight"], float)


def test_csv_nodes_only_required_columns_get_defaults() -> None:
    graph = parse_data_source("id,label\nn1,One\n", "csv", "nodes")
    assert graph.nodes == (node("n1", label="One"),)
    assert set(graph.nodes[0]) == {
        "id",
        "label",
        "layer",
        "is_partition",
        "belongs_to",
        "weight",
        "comment",
        "attrs",
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("True", True),
        ("1", True),
        ("yes", True),
        ("YES", True),
        ("false", False),
        ("False", False),
        ("0", False),
        ("no", False),
        ("No", False),
        ("", False),
        ("  yes  ", True),
    ],
)
def test_csv_is_partition_values(text: str, expected: bool) -> None:
    graph = parse_data_source(f"id,label,is_partition\nn1,One,{text}\n", "csv", "nodes")
    assert graph.nodes[0]["is_partition"] is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3", 3), ("-2", -2), ("+4", 4), ("0.5", 0.5), (".5", 0.5), ("1e3", 1000.0), ("2.", 2.0)],
)
def test_csv_weight_numbers(text: str, expected: float) -> None:
    graph = parse_data_source(f"id,label,weight\nn1,One,{text}\n", "csv", "nodes")
    assert graph.nodes[0]["weight"] == expected
    assert type(graph.nodes[0]["weight"]) is type(expected)


def test_csv_quoted_fields_with_commas_quotes_and_newlines() -> None:
    content = 'id,label,comment\n"n1","Smith, John","said ""hi"""\n"n2","two\nlines",\nn3,Three,x\n'
    graph = parse_data_source(content, "csv", "nodes")
    assert [n["label"] for n in graph.nodes] == ["Smith, John", "two\nlines", "Three"]
    assert graph.nodes[0]["comment"] == 'said "hi"'


def test_csv_header_case_whitespace_and_aliases() -> None:
    content = "  ID , LaBeL ,Is Partition,belongsTo, WEIGHT \nn1,One,yes,g,1\n"
    graph = parse_data_source(content, "csv", "nodes")
    assert graph.nodes == (node("n1", label="One", is_partition=True, belongs_to="g", weight=1),)


def test_csv_extra_columns_are_kept_in_attrs() -> None:
    content = "id,label,Color,owner team\nn1,One,red, ops \nn2,Two,,\n"
    graph = parse_data_source(content, "csv", "nodes")
    assert graph.nodes[0]["attrs"] == {"Color": "red", "owner team": "ops"}
    assert graph.nodes[1]["attrs"] == {"Color": None, "owner team": None}


def test_csv_values_are_stripped_and_empty_optional_values_are_none() -> None:
    content = "id,label,layer,comment\n  n1  ,  One  ,   ,  \n"
    graph = parse_data_source(content, "csv", "nodes")
    assert graph.nodes == (node("n1", label="One"),)


def test_csv_space_after_comma_before_quote() -> None:
    graph = parse_data_source('id, label\nn1, "One, first"\n', "csv", "nodes")
    assert graph.nodes[0]["label"] == "One, first"


def test_csv_blank_lines_and_empty_rows_are_skipped() -> None:
    content = "\n\nid,label\n\nn1,One\n   \n,\n , \nn2,Two\n\n"
    graph = parse_data_source(content, "csv", "nodes")
    assert [n["id"] for n in graph.nodes] == ["n1", "n2"]


def test_csv_crlf_bom_and_no_trailing_newline() -> None:
    graph = parse_data_source("\ufeffid,label\r\nn1,One\r\nn2,Two", "csv", "nodes")
    assert [(n["id"], n["label"]) for n in graph.nodes] == [("n1", "One"), ("n2", "Two")]


def test_csv_header_only_is_an_empty_table() -> None:
    assert parse_data_source("id,label\n", "csv", "nodes") == GraphData()


def test_csv_unnamed_empty_trailing_columns_are_ignored() -> None:
    graph = parse_data_source("id,label,,\nn1,One,,\n", "csv", "nodes")
    assert graph.nodes == (node("n1", label="One"),)


def test_tsv_nodes_commas_are_plain_text() -> None:
    content = 'id\tlabel\tweight\nn1\tSmith, John\t1.5\nn2\t"Quoted\ttab"\t\n'
    graph = parse_data_source(content, "tsv", "nodes")
    assert graph.nodes == (
        node("n1", label="Smith, John", weight=1.5),
        node("n2", label="Quoted\ttab"),
    )


# ---------------------------------------------------------------------------------------------
# csv / tsv: edges and layers


def test_csv_edges_all_columns() -> None:
    content = (
        "id,source,target,label,layer,weight,comment,protocol\n"
        "e1,n1,n2,calls,infra,2,,https\n"
        "e2,n2,n2,,,,loops back,\n"
    )
    graph = parse_data_source(content, "csv", "edges")
    assert graph == GraphData(
        edges=(
            edge("e1", "n1", "n2", label="calls", layer="infra", weight=2)
            | {"attrs": {"protocol": "https"}},
            edge("e2", "n2", "n2", comment="loops back") | {"attrs": {"protocol": None}},
        )
    )


def test_tsv_edges_minimal() -> None:
    graph = parse_data_source("ID\tSOURCE\tTARGET\ne1\ta\tb\n", "tsv", "edges")
    assert graph.edges == (edge("e1", "a", "b"),)


def test_csv_layers_with_id_column() -> None:
    content = "id,label,background_color,text_color,border_color\ninfra,Infra,222222,ffffff,000\n"
    graph = parse_data_source(content, "csv", "layers")
    assert graph.layers == (
        layer(
            "infra",
            label="Infra",
            background_color="222222",
            text_color="ffffff",
            border_color="000",
        ),
    )


def test_csv_layers_with_layer_column() -> None:
    graph = parse_data_source("layer,label,note\ndata,Data,x\n", "csv", "layers")
    assert graph.layers == (layer("data", label="Data", attrs={"note": "x"}),)


def test_csv_layers_id_wins_over_layer_and_layer_fills_empty_id() -> None:
    content = "id,layer,label\nA,ignored,First\n,B,Second\n"
    graph = parse_data_source(content, "csv", "layers")
    assert [(lay["id"], lay["label"]) for lay in graph.layers] == [("A", "First"), ("B", "Second")]
    assert graph.layers[0]["attrs"] == {}


def test_tsv_layers() -> None:
    graph = parse_data_source("Layer\tLabel\tBackgroundColor\nl1\tOne\tred\n", "tsv", "layers")
    assert graph.layers == (layer("l1", label="One", background_color="red"),)


# ---------------------------------------------------------------------------------------------
# csv / tsv: errors


@pytest.mark.parametrize(
    ("data_type", "columns"),
    [("nodes", "id, label"), ("edges", "id, source, target"), ("layers", "id (or layer), label")],
)
@pytest.mark.parametrize("content", ["", "\n\n", "  \n\t\n", "{sep}{sep}\n\n", "\ufeff"])
def test_table_empty_file(data_type: str, columns: str, content: str) -> None:
    for file_format, sep in (("csv", ","), ("tsv", "\t")):
        message = error_of(content.format(sep=sep), file_format, data_type)
        assert message == (
            f"{data_type} {file_format} file is empty: expected a header row with columns {columns}"
        )


def test_csv_missing_required_column_lists_found_columns() -> None:
    message = error_of("id,name\nn1,One\n", "csv", "nodes")
    assert message.startswith(
        "nodes csv is missing required column 'label' (found columns: id, name)"
    )
    assert "add it to the header row" in message


def test_csv_missing_several_required_columns() -> None:
    message = error_of("name,kind\n", "csv", "edges")
    assert "edges csv is missing required columns 'id', 'source' and 'target'" in message
    assert "(found columns: name, kind)" in message


@pytest.mark.parametrize(
    ("content", "missing"),
    [
        ("label\nOne\n", "column 'id' (or 'layer')"),
        ("id,background_color\nl1,red\n", "column 'label'"),
        ("name\nx\n", "columns 'id' (or 'layer') and 'label'"),
    ],
)
def test_csv_layers_missing_columns(content: str, missing: str) -> None:
    assert f"layers csv is missing required {missing}" in error_of(content, "csv", "layers")


def test_tsv_missing_column_names_the_format() -> None:
    message = error_of("id\tname\n", "tsv", "nodes")
    assert message.startswith("nodes tsv is missing required column 'label'")


def test_csv_file_with_tabs_suggests_tsv() -> None:
    message = error_of("id\tlabel\nn1\tOne\n", "csv", "nodes")
    assert "missing required columns 'id' and 'label'" in message
    assert "'id\\tlabel'" in message  # the tab is shown, not hidden
    assert "upload it as tsv" in message


def test_tsv_file_with_commas_suggests_csv() -> None:
    assert "upload it as csv" in error_of("id,label\nn1,One\n", "tsv", "nodes")


def test_wrong_data_type_suggests_the_right_one() -> None:
    assert "columns of an edges file" in error_of("id,source,target\n", "csv", "nodes")
    assert "columns of a nodes file" in error_of("id,label\n", "csv", "edges")
    assert "columns of a layers file" in error_of("layer,label\n", "csv", "edges")


def test_csv_duplicate_header_column() -> None:
    message = error_of("id,label,ID\n", "csv", "nodes")
    assert "nodes csv header (row 1) has more than one column for 'ID'" in message
    assert "(column 1)" in message and "(column 3)" in message


def test_csv_duplicate_header_column_via_alias() -> None:
    message = error_of("id,label,is_partition,isPartition\n", "csv", "nodes")
    assert "'is_partition' (column 3) and 'isPartition' (column 4)" in message


def test_csv_duplicate_extra_column() -> None:
    assert "more than one column for 'Color'" in error_of("id,label,color,Color\n", "csv", "nodes")


@pytest.mark.parametrize(
    ("data_type", "content", "row", "column"),
    [
        ("nodes", "id,label\nn1,One\n\n\n,Two\n", 5, "'id'"),
        ("nodes", "id,label\nn1,One\nn2,Two\nn3,   \n", 4, "'label'"),
        ("edges", "id,source,target\ne1,a,b\ne2,,b\n", 3, "'source'"),
        ("edges", "id,source,target\ne1,a,\n", 2, "'target'"),
        ("edges", "id,source,target\n,a,b\n", 2, "'id'"),
        ("layers", "id,label\nl1,\n", 2, "'label'"),
        ("layers", "id,label\n,One\n", 2, "'id'"),
        ("layers", "layer,label\n,One\n", 2, "'layer'"),
        ("layers", "id,layer,label\n,,One\n", 2, "'id' (or 'layer')"),
    ],
)
def test_csv_empty_required_value(data_type: str, content: str, row: int, column: str) -> None:
    message = error_of(content, "csv", data_type)
    assert message.startswith(
        f"{data_type} csv, row {row}: empty value in required column {column}"
    )


def test_csv_row_numbers_count_lines_as_an_editor_does() -> None:
    # The header is line 1; a quoted value spanning two lines moves later rows down.
    content = 'id,label\nn1,"first\nsecond"\n\nn2,Two\n,Missing\n'
    assert "row 6: empty value in required column 'id'" in error_of(content, "csv", "nodes")


def test_csv_row_numbers_when_file_starts_with_blank_lines() -> None:
    content = "\n\nid,label\nn1,\n"
    assert "row 4: empty value in required column 'label'" in error_of(content, "csv", "nodes")


def test_csv_duplicate_node_id() -> None:
    content = "id,label\nn1,One\nn3,Three\n\nn3,Again\n"
    message = error_of(content, "csv", "nodes")
    assert "nodes csv, row 5: duplicate node id 'n3' (first seen on row 3)" in message


def test_csv_duplicate_edge_id() -> None:
    message = error_of("id,source,target\ne1,a,b\ne1,b,c\n", "csv", "edges")
    assert "edges csv, row 3: duplicate edge id 'e1' (first seen on row 2)" in message


def test_tsv_duplicate_layer_id_from_either_column() -> None:
    message = error_of("id\tlayer\tlabel\nl1\t\tOne\n\tl1\tAgain\n", "tsv", "layers")
    assert "layers tsv, row 3: duplicate layer id 'l1' (first seen on row 2)" in message


@pytest.mark.parametrize("bad", ["heavy", "1,5", "1.2.3", "inf", "nan", "1e999", "0x10", "--1"])
def test_tsv_weight_must_be_a_finite_number(bad: str) -> None:
    message = error_of(f"id\tlabel\tweight\nn1\tOne\t1\nn2\tTwo\t{bad}\n", "tsv", "nodes")
    assert f"nodes tsv, row 3: 'weight' must be a number, got {bad!r}" in message


def test_csv_edge_weight_must_be_a_number() -> None:
    message = error_of("id,source,target,weight\ne1,a,b,heavy\n", "csv", "edges")
    assert "edges csv, row 2: 'weight' must be a number, got 'heavy'" in message


def test_csv_is_partition_must_be_a_boolean() -> None:
    message = error_of("id,label,is_partition\nn1,One,true\nn2,Two,maybe\n", "csv", "nodes")
    assert "nodes csv, row 3: 'is_partition' must be true or false" in message
    assert "got 'maybe'" in message


def test_csv_long_values_are_shortened_in_messages() -> None:
    message = error_of("id,label,weight\nn1,One," + "x" * 500 + "\n", "csv", "nodes")
    assert "x" * 60 + "'..." in message
    assert len(message) < 300


def test_csv_too_many_fields() -> None:
    message = error_of("id,label,layer\nn1,One,l\nn2,Smith, John,l\n", "csv", "nodes")
    assert message.startswith("nodes csv, row 3 has 4 fields but the header has 3")
    assert "double quotes" in message


def test_csv_too_few_fields() -> None:
    message = error_of("id,label,layer\nn1,One\n", "csv", "nodes")
    assert message.startswith("nodes csv, row 2 has 2 fields but the header has 3")


def test_tsv_too_many_fields() -> None:
    assert "edges tsv, row 2 has 4 fields but the header has 3" in error_of(
        "id\tsource\ttarget\ne1\ta\tb\tc\n", "tsv", "edges"
    )


def test_csv_value_in_unnamed_column() -> None:
    message = error_of("id,label,\nn1,One,\nn2,Two,oops\n", "csv", "nodes")
    assert "nodes csv, row 3: value 'oops' is in column 3, which has no name" in message


def test_csv_unclosed_quote_names_the_row_where_it_opens() -> None:
    message = error_of('id,label\nn1,One\nn2,"Two\nn3,Three\n', "csv", "nodes")
    assert "nodes csv, row 3: a quoted value is never closed" in message


def test_csv_text_after_closing_quote() -> None:
    message = error_of('id,label\nn1,"One"x\n', "csv", "nodes")
    assert "nodes csv, row 2: badly quoted value" in message
    assert '""' in message


def test_csv_value_longer_than_the_csv_limit() -> None:
    content = 'id,label\nn1,"' + "x" * (csv.field_size_limit() + 10) + '"\n'
    message = error_of(content, "csv", "nodes")
    assert "nodes csv, row 2: a value is longer than" in message


def test_csv_nul_character_is_rejected_with_its_row() -> None:
    message = error_of("id,label\nn1,One\nn2,T\x00wo\n", "csv", "nodes")
    assert "nodes csv, row 3 (character 5): contains a NUL character" in message


def test_csv_lone_surrogate_is_rejected_with_its_row() -> None:
    message = error_of("id,label\r\nn1,One\r\nn2,\udc80\r\n", "tsv", "nodes")
    assert "nodes tsv, row 3 (character 4): contains '\\udc80'" in message


# ---------------------------------------------------------------------------------------------
# json graph


def test_json_graph_is_normalised_like_csv() -> None:
    document = {
        "nodes": [
            {"id": "p", "label": "Partition", "isPartition": True},
            {
                "id": 1,
                "label": "One",
                "layer": "l1",
                "belongs_to": "p",
                "weight": "2",
                "comment": "c",
                "dataset": 7,
                "attrs": {"color": "red"},
            },
            {"id": "n2", "label": 42, "is_partition": "no", "weight": 0.5},
        ],
        "edges": [{"id": "e1", "source": 1, "target": "n2", "label": "x", "weight": 3}],
        "layers": [
            {"id": "l1", "label": "Layer", "backgroundColor": "fff"},
            {"layer": "l2", "label": "Two"},
        ],
        "metadata": {"ignored": True},
    }
    graph = parse_data_source(orjson.dumps(document).decode(), "json", "graph")
    assert graph == GraphData(
        nodes=(
            node("p", label="Partition", is_partition=True),
            node(
                "1",
                label="One",
                layer="l1",
                belongs_to="p",
                weight=2,
                comment="c",
                attrs={"color": "red", "dataset": 7},
            ),
            node("n2", label="42", weight=0.5),
        ),
        edges=(edge("e1", "1", "n2", label="x", weight=3),),
        layers=(layer("l1", label="Layer", background_color="fff"), layer("l2", label="Two")),
    )


@pytest.mark.parametrize("layers", [{}, {"layers": None}, {"layers": []}])
def test_json_layers_are_optional(layers: dict[str, Any]) -> None:
    graph = parse_data_source(
        orjson.dumps({"nodes": [], "edges": []} | layers).decode(), "json", "graph"
    )
    assert graph == GraphData()


def test_json_bom_and_whitespace() -> None:
    graph = parse_data_source(
        '\ufeff\n  {"nodes": [{"id": "a", "label": "A"}], "edges": []}\n', "json", "graph"
    )
    assert graph.nodes == (node("a", label="A"),)


def test_json_null_optional_values_and_attrs() -> None:
    document = {
        "nodes": [{"id": "a", "label": "A", "layer": None, "weight": None, "attrs": None}],
        "edges": [],
    }
    assert json_error_free(document).nodes == (node("a", label="A"),)


def test_json_invalid_syntax_reports_line_and_column() -> None:
    message = json_error('{\n  "nodes": [],\n  "edges": [,]\n}')
    assert message.startswith("json graph is not valid JSON:")
    assert "at line 3, column 13" in message


def test_json_truncated_document() -> None:
    assert "at line 1, column" in json_error('{"nodes": [')


@pytest.mark.parametrize("content", ["", "   \n", "\ufeff"])
def test_json_empty_file(content: str) -> None:
    assert json_error(content).startswith("json graph file is empty")


@pytest.mark.parametrize(
    ("document", "kind"),
    [([], "an array"), ('"graph"', "a string"), (3, "a number"), (None, "null")],
)
def test_json_must_be_an_object(document: Any, kind: str) -> None:
    assert f"json graph must be an object with arrays nodes, edges and layers, got {kind}" in (
        json_error(document)
    )


@pytest.mark.parametrize("array", ["nodes", "edges"])
def test_json_required_arrays(array: str) -> None:
    document = {"nodes": [], "edges": []}
    del document[array]
    assert f"json graph has no '{array}' array" in json_error(document)


@pytest.mark.parametrize(
    ("array", "value", "kind"),
    [("nodes", {}, "an object"), ("edges", "x", "a string"), ("layers", 1, "a number")],
)
def test_json_arrays_must_be_arrays(array: str, value: Any, kind: str) -> None:
    document = {"nodes": [], "edges": []} | {array: value}
    assert f"json graph: '{array}' must be an array, got {kind}" in json_error(document)


def test_json_element_must_be_an_object() -> None:
    document = {"nodes": [{"id": "a", "label": "A"}, "b"], "edges": []}
    assert "json graph, nodes[1] must be an object, got a string" in json_error(document)


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"nodes": [{"label": "A"}], "edges": []}, "nodes[0] is missing 'id'"),
        ({"nodes": [{"id": "a"}], "edges": []}, "nodes[0] is missing 'label'"),
        ({"nodes": [{"id": "a", "label": ""}], "edges": []}, "nodes[0] has an empty 'label'"),
        ({"nodes": [{"id": "", "label": "A"}], "edges": []}, "nodes[0] has an empty 'id'"),
        ({"nodes": [{"id": None, "label": "A"}], "edges": []}, "nodes[0] is missing 'id'"),
        (
            {"nodes": [], "edges": [{"id": "e0", "source": "a", "target": "b"}, {"id": "e1"}]},
            "edges[1] is missing 'source'",
        ),
        (
            {
                "nodes": [],
                "edges": [{"id": f"e{i}", "source": "a", "target": "b"} for i in range(3)]
                + [{"id": "e3", "source": "a"}],
            },
            "edges[3] is missing 'target'",
        ),
        ({"nodes": [], "edges": [{"source": "a", "target": "b"}]}, "edges[0] is missing 'id'"),
        (
            {"nodes": [], "edges": [], "layers": [{"label": "L"}]},
            "layers[0] is missing 'id' (or 'layer')",
        ),
        ({"nodes": [], "edges": [], "layers": [{"id": "l"}]}, "layers[0] is missing 'label'"),
        (
            {"nodes": [], "edges": [], "layers": [{"id": "", "label": "L"}]},
            "layers[0] has an empty 'id' (or 'layer')",
        ),
        (
            {"nodes": [], "edges": [], "layers": [{"id": None, "layer": None, "label": "L"}]},
            "layers[0] is missing 'id' (or 'layer')",
        ),
    ],
)
def test_json_missing_required_keys(document: dict[str, Any], expected: str) -> None:
    message = json_error(document)
    assert message.startswith("json graph, ")
    assert expected in message


@pytest.mark.parametrize(
    ("value", "shown"), [(1.5, "got 1.5"), (True, "got a boolean"), ([1], "got an array")]
)
def test_json_id_must_be_a_string_or_integer(value: Any, shown: str) -> None:
    message = json_error({"nodes": [{"id": value, "label": "A"}], "edges": []})
    assert "json graph, nodes[0]: 'id' must be a string or an integer" in message
    assert shown in message


def test_json_edge_source_type() -> None:
    message = json_error({"nodes": [], "edges": [{"id": "e", "source": {}, "target": "b"}]})
    assert "edges[0]: 'source' must be a string or an integer, got an object" in message


def test_json_optional_text_type() -> None:
    message = json_error({"nodes": [{"id": "a", "label": "A", "layer": ["x"]}], "edges": []})
    assert "nodes[0]: 'layer' must be a string, got an array" in message


def test_json_label_type() -> None:
    message = json_error({"nodes": [{"id": "a", "label": {"en": "A"}}], "edges": []})
    assert "nodes[0]: 'label' must be a string, got an object" in message


@pytest.mark.parametrize(
    ("value", "shown"), [("heavy", "got 'heavy'"), (True, "got a boolean"), ([], "got an array")]
)
def test_json_weight_must_be_a_number(value: Any, shown: str) -> None:
    document = {"nodes": [], "edges": [{"id": "e", "source": "a", "target": "b", "weight": value}]}
    message = json_error(document)
    assert "json graph, edges[0]: 'weight' must be a number" in message
    assert shown in message


@pytest.mark.parametrize("value", ["maybe", 2, [], 0.5])
def test_json_is_partition_must_be_a_boolean(value: Any) -> None:
    document = {"nodes": [{"id": "a", "label": "A", "is_partition": value}], "edges": []}
    assert "nodes[0]: 'is_partition' must be true or false" in json_error(document)


@pytest.mark.parametrize(("value", "expected"), [(1, True), (0, False), ("Yes", True)])
def test_json_is_partition_spellings(value: Any, expected: bool) -> None:
    document = {"nodes": [{"id": "a", "label": "A", "is_partition": value}], "edges": []}
    assert json_error_free(document).nodes[0]["is_partition"] is expected


def test_json_attrs_must_be_an_object() -> None:
    document = {"nodes": [{"id": "a", "label": "A", "attrs": [1]}], "edges": []}
    assert "nodes[0]: 'attrs' must be an object, got an array" in json_error(document)


def test_json_same_field_twice_via_alias() -> None:
    document = {"nodes": [{"id": "a", "label": "A", "belongs_to": "x", "belongsTo": "y"}]}
    message = json_error(document | {"edges": []})
    assert "nodes[0] has both 'belongs_to' and 'belongsTo'" in message


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (
            {
                "nodes": [
                    {"id": "a", "label": "A"},
                    {"id": "b", "label": "B"},
                    {"id": "a", "label": "C"},
                ],
                "edges": [],
            },
            "json graph, nodes[2]: duplicate node id 'a' (first seen at nodes[0])",
        ),
        (
            {"nodes": [{"id": 1, "label": "A"}, {"id": "1", "label": "B"}], "edges": []},
            "nodes[1]: duplicate node id '1' (first seen at nodes[0])",
        ),
        (
            {"nodes": [], "edges": [{"id": "e", "source": "a", "target": "b"}] * 2},
            "edges[1]: duplicate edge id 'e' (first seen at edges[0])",
        ),
        (
            {
                "nodes": [],
                "edges": [],
                "layers": [{"id": "l", "label": "L"}, {"layer": "l", "label": "M"}],
            },
            "layers[1]: duplicate layer id 'l' (first seen at layers[0])",
        ),
    ],
)
def test_json_duplicate_ids(document: dict[str, Any], expected: str) -> None:
    assert expected in json_error(document)


def test_json_escaped_nul_is_rejected_with_its_path() -> None:
    content = '{"nodes": [{"id": "a", "label": "A\\u0000"}], "edges": []}'
    assert "json graph: nodes[0].label contains a NUL character" in json_error(content)


def test_json_escaped_nul_in_a_key() -> None:
    content = '{"nodes": [{"id": "a", "label": "A", "k\\u0000": 1}], "edges": []}'
    assert "key 'nodes[0].k\\x00' contains a NUL character" in json_error(content)


def test_json_escaped_backslash_u0000_is_plain_text() -> None:
    content = '{"nodes": [{"id": "a", "label": "A\\\\u0000"}], "edges": []}'
    assert parse_data_source(content, "json", "graph").nodes[0]["label"] == "A\\u0000"


def test_json_raw_nul_is_rejected_with_line_and_column() -> None:
    message = json_error('{"nodes": [],\n"edges": []}\x00')
    assert "json graph: line 2, column 13: contains a NUL character" in message


def test_json_lone_surrogate_is_rejected() -> None:
    assert "not a valid Unicode character" in json_error('{"nodes": [], "edges": ["\ud800"]}')


def test_json_escaped_lone_surrogate_is_invalid_json() -> None:
    assert "is not valid JSON" in json_error('{"nodes": [], "edges": [], "x": "\\ud800"}')


def test_json_too_deep_is_a_processing_error() -> None:
    assert "is not valid JSON" in json_error("[" * 5000)


# ---------------------------------------------------------------------------------------------
# GraphData


def test_graph_data_defaults_counts_and_json_shape() -> None:
    empty = GraphData()
    assert (empty.node_count, empty.edge_count) == (0, 0)
    assert empty.to_json() == {"nodes": [], "edges": [], "layers": []}
    graph = GraphData([node("a"), node("b")], [edge("e", "a", "b")], [layer("l")])
    assert isinstance(graph.nodes, tuple) and isinstance(graph.layers, tuple)
    assert (graph.node_count, graph.edge_count) == (2, 1)
    assert graph.to_json() == {
        "nodes": [node("a"), node("b")],
        "edges": [edge("e", "a", "b")],
        "layers": [layer("l")],
    }
    assert graph == GraphData(tuple(graph.nodes), tuple(graph.edges), tuple(graph.layers))


def test_graph_data_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        GraphData().nodes = ()  # type: ignore[misc]


def test_graph_data_from_json_none_and_missing_arrays() -> None:
    assert GraphData.from_json(None) == GraphData()
    assert GraphData.from_json({}) == GraphData()
    assert GraphData.from_json({"nodes": [node("a")]}) == GraphData(nodes=(node("a"),))


def test_graph_data_round_trips_through_json_text() -> None:
    content = "id,label,is_partition,weight,Extra\np,P,yes,,\nn,N,,1.5,x\n"
    graph = merge_graphs(
        [
            parse_data_source(content, "csv", "nodes"),
            parse_data_source("id,source,target,attrs\ne,n,n,z\n", "csv", "edges"),
            parse_data_source("layer,label,text_color\nl,L,red\n", "csv", "layers"),
        ]
    )
    stored = orjson.loads(orjson.dumps(graph.to_json()))
    assert GraphData.from_json(stored) == graph


def test_graph_data_from_json_rejects_bad_stored_data() -> None:
    with pytest.raises(ProcessingError, match="stored graph must be an object"):
        GraphData.from_json([])  # type: ignore[arg-type]
    with pytest.raises(ProcessingError, match=r"stored graph, nodes\[0\] is missing 'label'"):
        GraphData.from_json({"nodes": [{"id": "a"}]})


# ---------------------------------------------------------------------------------------------
# merge_graphs


def test_merge_nothing_is_empty() -> None:
    assert merge_graphs([]) == GraphData()


def test_merge_nodes_later_wins_in_first_seen_position() -> None:
    first = GraphData(nodes=(node("a", label="A1"), node("b", label="B1")))
    second = GraphData(nodes=(node("c", label="C2"), node("a", label="A2")))
    merged = merge_graphs([first, second])
    assert [(n["id"], n["label"]) for n in merged.nodes] == [("a", "A2"), ("b", "B1"), ("c", "C2")]


def test_merge_edges_appended_and_duplicate_ids_replaced_in_place() -> None:
    nodes = GraphData(nodes=(node("a"), node("b"), node("c")))
    first = GraphData(edges=(edge("e1", "a", "b"), edge("e2", "b", "c")))
    second = GraphData(edges=(edge("e3", "c", "a"), edge("e1", "a", "c", label="new")))
    merged = merge_graphs([nodes, first, second])
    assert [(e["id"], e["target"], e["label"]) for e in merged.edges] == [
        ("e1", "c", "new"),
        ("e2", "c", None),
        ("e3", "a", None),
    ]
    assert (merged.node_count, merged.edge_count) == (3, 3)


def test_merge_layers_by_id_later_wins() -> None:
    first = GraphData(layers=(layer("l1", label="Old"), layer("l2")))
    second = GraphData(layers=(layer("l3"), layer("l1", label="New", text_color="red")))
    merged = merge_graphs([first, second])
    assert merged.layers == (layer("l1", label="New", text_color="red"), layer("l2"), layer("l3"))


def test_merge_nodes_file_with_edges_file() -> None:
    nodes = parse_data_source("id,label\na,A\nb,B\n", "csv", "nodes")
    edges = parse_data_source("id\tsource\ttarget\ne1\ta\tb\n", "tsv", "edges")
    merged = merge_graphs([edges, nodes])  # order of inputs does not matter for validity
    assert (merged.node_count, merged.edge_count) == (2, 1)


def test_merge_does_not_mutate_inputs() -> None:
    first = GraphData(nodes=(node("a"),))
    second = GraphData(nodes=(node("a", label="X"),), edges=(edge("e", "a", "a"),))
    before = (orjson.dumps(first.to_json()), orjson.dumps(second.to_json()))
    merge_graphs([first, second])
    assert before == (orjson.dumps(first.to_json()), orjson.dumps(second.to_json()))


def test_merge_edge_to_missing_target() -> None:
    message = merge_error(GraphData(nodes=(node("a"),), edges=(edge("e1", "a", "zz"),)))
    assert message.startswith(
        "edge 'e1' has target 'zz', which is not a node of the merged graph "
        "(no other edge points to a missing node)"
    )


def test_merge_edge_from_missing_source_counts_others() -> None:
    graph = GraphData(
        nodes=(node("a"),),
        edges=(
            edge("ok", "a", "a"),
            edge("e2", "x", "a"),
            edge("e3", "a", "y"),
            edge("e4", "x", "y"),
        ),
    )
    message = merge_error(graph)
    assert "edge 'e2' has source 'x', which is not a node of the merged graph" in message
    assert "(2 other edges also point to missing nodes)" in message


def test_merge_one_other_missing() -> None:
    graph = GraphData(edges=(edge("e1", "x", "y"), edge("e2", "y", "x")))
    assert "(1 other edge also points to a missing node)" in merge_error(graph)


def test_merge_node_replaced_by_later_input_is_still_present() -> None:
    first = GraphData(nodes=(node("a"), node("b")), edges=(edge("e", "a", "b"),))
    second = GraphData(nodes=(node("b", label="B2"),))
    assert merge_graphs([first, second]).edge_count == 1


def test_merge_edge_to_partition() -> None:
    graph = GraphData(
        nodes=(node("p", is_partition=True), node("a", belongs_to="p"), node("b")),
        edges=(edge("e1", "a", "b"), edge("e2", "a", "p")),
    )
    message = merge_error(graph)
    assert message.startswith(
        "edge 'e2' has target 'p', which is a partition node "
        "(no other edge touches a partition node)"
    )
    assert "is_partition" in message


def test_merge_edges_to_partition_counted() -> None:
    graph = GraphData(
        nodes=(node("p", is_partition=True), node("a")),
        edges=(edge("e1", "p", "a"), edge("e2", "a", "p"), edge("e3", "p", "p")),
    )
    message = merge_error(graph)
    assert "edge 'e1' has source 'p', which is a partition node" in message
    assert "(2 other edges also touch partition nodes)" in message


def test_merge_later_input_can_turn_a_node_into_a_partition() -> None:
    first = GraphData(nodes=(node("a"), node("b")), edges=(edge("e", "a", "b"),))
    second = GraphData(nodes=(node("b", is_partition=True),))
    assert "edge 'e' has target 'b', which is a partition node" in merge_error(first, second)


def test_merge_missing_nodes_are_reported_before_partitions() -> None:
    graph = GraphData(
        nodes=(node("p", is_partition=True), node("a")),
        edges=(edge("e1", "a", "p"), edge("e2", "a", "gone")),
    )
    assert "edge 'e2' has target 'gone'" in merge_error(graph)


# ---------------------------------------------------------------------------------------------
# source_hash


def sample_graph() -> GraphData:
    return GraphData(
        nodes=(node("a", weight=1), node("b")), edges=(edge("e", "a", "b"),), layers=(layer("l"),)
    )


def test_source_hash_format_and_definition() -> None:
    digest = source_hash([])
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert digest == hashlib.sha256(b"[]").hexdigest()
    expected = orjson.dumps([sample_graph().to_json()], option=orjson.OPT_SORT_KEYS) + b"salt"
    assert source_hash([sample_graph()], "salt") == hashlib.sha256(expected).hexdigest()


def test_source_hash_is_stable_and_ignores_dict_key_order() -> None:
    shuffled = GraphData(
        nodes=tuple(dict(reversed(list(n.items()))) for n in sample_graph().nodes),
        edges=sample_graph().edges,
        layers=sample_graph().layers,
    )
    assert source_hash([sample_graph()]) == source_hash([sample_graph()])
    assert source_hash([sample_graph()]) == source_hash([shuffled])


def test_source_hash_is_sensitive_to_order_content_and_salt() -> None:
    a = sample_graph()
    b = GraphData(nodes=(node("c"),))
    base = source_hash([a, b])
    assert base != source_hash([b, a])
    assert base != source_hash([a])
    assert base != source_hash([a, b], salt="x")
    assert source_hash([a, b], salt="x") != source_hash([a, b], salt="y")
    changed = GraphData(nodes=(node("a", weight=2), node("b")), edges=a.edges, layers=a.layers)
    assert source_hash([changed, b]) != base
    assert source_hash([GraphData()]) != source_hash([])


def test_source_hash_weight_int_and_float_differ_as_stored() -> None:
    # 1 and 1.0 are stored differently, so they are different inputs.
    assert source_hash([GraphData(nodes=(node("a", weight=1),))]) != source_hash(
        [GraphData(nodes=(node("a", weight=1.0),))]
    )


# ---------------------------------------------------------------------------------------------
# apply_transforms


def layered_graph() -> GraphData:
    return GraphData(
        nodes=(
            node("p", layer="infra", is_partition=True),
            node("web", layer="infra", belongs_to="p"),
            node("db", layer="data", belongs_to="p"),
            node("cache", layer="data"),
            node("loose"),
        ),
        edges=(
            edge("e1", "web", "db"),
            edge("e2", "web", "cache"),
            edge("e3", "cache", "cache"),
        ),
        layers=(layer("infra"), layer("data"), layer("unused")),
    )


@pytest.mark.parametrize(
    "config", [None, {}, {"transforms": []}, {"transforms": None}, {"other": 1}]
)
def test_transforms_absent_leave_graph_unchanged(config: Any) -> None:
    assert apply_transforms(layered_graph(), config) == layered_graph()


def test_keep_layers() -> None:
    graph = apply_transforms(
        layered_graph(), {"transforms": [{"kind": "keep_layers", "params": {"layers": ["data"]}}]}
    )
    assert graph == GraphData(
        nodes=(node("db", layer="data"), node("cache", layer="data")),  # belongs_to p cleared
        edges=(edge("e3", "cache", "cache"),),
        layers=(layer("data"),),
    )


def test_keep_layers_accepts_integer_ids() -> None:
    graph = GraphData(nodes=(node("a", layer="1"), node("b", layer="2")), layers=(layer("1"),))
    kept = apply_transforms(
        graph, {"transforms": [{"kind": "keep_layers", "params": {"layers": [1]}}]}
    )
    assert [n["id"] for n in kept.nodes] == ["a"]
    assert kept.layers == (layer("1"),)


def test_drop_layers() -> None:
    graph = apply_transforms(
        layered_graph(),
        {"transforms": [{"kind": "drop_layers", "params": {"layers": ["data", "unused"]}}]},
    )
    assert graph == GraphData(
        nodes=(
            node("p", layer="infra", is_partition=True),
            node("web", layer="infra", belongs_to="p"),
            node("loose"),  # no layer: not in a dropped layer
        ),
        edges=(),
        layers=(layer("infra"),),
    )


def test_drop_layers_empty_list_changes_nothing() -> None:
    config = {"transforms": [{"kind": "drop_layers", "params": {"layers": []}}]}
    assert apply_transforms(layered_graph(), config) == layered_graph()


def test_drop_isolated_nodes_keeps_containing_partitions() -> None:
    graph = apply_transforms(layered_graph(), {"transforms": [{"kind": "drop_isolated_nodes"}]})
    assert [n["id"] for n in graph.nodes] == ["p", "web", "db", "cache"]
    assert graph.edges == layered_graph().edges
    assert graph.layers == layered_graph().layers


def test_drop_isolated_nodes_drops_partitions_with_no_connected_member() -> None:
    graph = GraphData(
        nodes=(
            node("p", is_partition=True),
            node("q", is_partition=True),
            node("a", belongs_to="q"),
            node("b", belongs_to="p"),
            node("c", belongs_to="a"),
        ),
        edges=(edge("e", "b", "b"),),
    )
    result = apply_transforms(graph, {"transforms": [{"kind": "drop_isolated_nodes"}]})
    assert result.nodes == (node("p", is_partition=True), node("b", belongs_to="p"))


def test_drop_isolated_nodes_survives_belongs_to_cycles() -> None:
    graph = GraphData(
        nodes=(node("a", belongs_to="b"), node("b", belongs_to="a"), node("c")),
        edges=(edge("e", "a", "a"),),
    )
    result = apply_transforms(
        graph, {"transforms": [{"kind": "drop_isolated_nodes", "params": {}}]}
    )
    assert [n["id"] for n in result.nodes] == ["a", "b"]


def test_drop_partitions() -> None:
    graph = GraphData(
        nodes=(node("p", is_partition=True), node("a", belongs_to="p"), node("b", belongs_to="a")),
        edges=(edge("e1", "a", "b"), edge("e2", "a", "p")),
        layers=(layer("l"),),
    )
    result = apply_transforms(graph, {"transforms": [{"kind": "drop_partitions"}]})
    assert result == GraphData(
        nodes=(node("a"), node("b", belongs_to="a")),
        edges=(edge("e1", "a", "b"),),
        layers=(layer("l"),),
    )


def test_transforms_run_in_order() -> None:
    config = {
        "transforms": [
            {"kind": "drop_partitions"},
            {"kind": "drop_layers", "params": {"layers": ["infra"]}},
            {"kind": "drop_isolated_nodes"},
        ]
    }
    result = apply_transforms(layered_graph(), config)
    assert result == GraphData(
        nodes=(node("cache", layer="data"),),
        edges=(edge("e3", "cache", "cache"),),
        layers=(layer("data"), layer("unused")),
    )


def test_transforms_do_not_mutate_input() -> None:
    graph = layered_graph()
    before = orjson.dumps(graph.to_json())
    apply_transforms(graph, {"transforms": [{"kind": "drop_partitions"}]})
    apply_transforms(
        graph, {"transforms": [{"kind": "keep_layers", "params": {"layers": ["data"]}}]}
    )
    assert orjson.dumps(graph.to_json()) == before


KINDS = "keep_layers, drop_layers, drop_isolated_nodes, drop_partitions"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ([], "transform config must be an object"),
        ({"transforms": {"kind": "drop_partitions"}}, "transforms must be a list"),
        ({"transforms": ["drop_partitions"]}, "transforms[0] must be an object"),
        (
            {"transforms": [{"params": {}}]},
            f"transforms[0] has no 'kind'; supported kinds: {KINDS}",
        ),
        (
            {"transforms": [{"kind": "drop_partitions"}, {"kind": "flatten"}]},
            f"transforms[1]: unknown kind 'flatten'; supported kinds: {KINDS}",
        ),
        (
            {"transforms": [{"kind": ["x"]}]},
            f"transforms[0]: unknown kind ['x']; supported kinds: {KINDS}",
        ),
        (
            {"transforms": [{"kind": "drop_partitions", "params": [1]}]},
            "transforms[0] (drop_partitions): 'params' must be an object, got an array",
        ),
        (
            {"transforms": [{"kind": "keep_layers"}]},
            "transforms[0] (keep_layers): params.layers is missing",
        ),
        (
            {"transforms": [{"kind": "drop_layers", "params": {"layers": None}}]},
            "transforms[0] (drop_layers): params.layers is missing",
        ),
        (
            {"transforms": [{"kind": "keep_layers", "params": {"layers": "data"}}]},
            'params.layers must be a list of layer ids, got a string (write ["data"])',
        ),
        (
            {"transforms": [{"kind": "keep_layers", "params": {"layers": ["a", {"id": "b"}]}}]},
            "transforms[0] (keep_layers): params.layers[1] must be a layer id (a string), "
            "got an object",
        ),
        (
            {"transforms": [{"kind": "keep_layers", "params": {"layers": [True]}}]},
            "params.layers[0] must be a layer id (a string), got a boolean",
        ),
        (
            {"transforms": [{"kind": "keep_layers", "params": {"layer": ["a"]}}]},
            "transforms[0] (keep_layers): unknown param 'layer'; keep_layers takes only 'layers'",
        ),
        (
            {"transforms": [{"kind": "drop_isolated_nodes", "params": {"min": 1}}]},
            "transforms[0] (drop_isolated_nodes): unknown param 'min'; "
            "drop_isolated_nodes takes no params",
        ),
    ],
)
def test_transform_errors(config: Any, expected: str) -> None:
    assert expected in transform_error(config)


def test_transform_errors_are_found_before_any_work() -> None:
    config = {"transforms": [{"kind": "drop_partitions"}, {"kind": "keep_layers"}]}
    assert transform_error(config, layered_graph()).startswith("transforms[1] (keep_layers)")


# ---------------------------------------------------------------------------------------------
# Properties

ids = st.text(alphabet="abcdefgh", min_size=1, max_size=3)
table_text = st.text(alphabet=st.sampled_from(list('abi,\t"\n\r \x00yes1.5d_') + ["\ufeff", "é"]))
FAST = settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(
    content=st.one_of(st.text(max_size=200), table_text),
    pair=st.sampled_from(
        [("csv", "nodes"), ("tsv", "edges"), ("csv", "layers"), ("json", "graph")]
    ),
)
def test_parse_never_raises_anything_but_processing_error(
    content: str, pair: tuple[str, str]
) -> None:
    header = {
        "nodes": "id,label,weight\n",
        "edges": "id\tsource\ttarget\n",
        "layers": "layer,label\n",
    }
    file_format, data_type = pair
    for text in (content, header.get(data_type, "") + content):
        try:
            graph = parse_data_source(text, file_format, data_type)
        except ProcessingError as exc:
            assert str(exc)
            continue
        # Whatever parses can be stored and read back.
        stored = orjson.loads(orjson.dumps(graph.to_json()))
        assert GraphData.from_json(stored) == graph


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


@FAST
@given(
    document=st.dictionaries(
        st.sampled_from(["nodes", "edges", "layers", "x"]),
        st.lists(
            st.dictionaries(
                st.sampled_from(
                    ["id", "label", "source", "target", "layer", "weight", "is_partition", "attrs"]
                ),
                json_values,
                max_size=6,
            )
            | json_values,
            max_size=3,
        )
        | json_values,
    )
)
def test_json_graph_never_raises_anything_but_processing_error(document: dict[str, Any]) -> None:
    try:
        graph = parse_data_source(orjson.dumps(document).decode(), "json", "graph")
    except ProcessingError:
        return
    assert GraphData.from_json(orjson.loads(orjson.dumps(graph.to_json()))) == graph


cell = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8
)


@FAST
@given(
    rows=st.lists(st.tuples(ids, cell, cell), max_size=6, unique_by=lambda row: row[0]),
    file_format=st.sampled_from(["csv", "tsv"]),
)
def test_written_tables_parse_back(rows: list[tuple[str, str, str]], file_format: str) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="," if file_format == "csv" else "\t")
    writer.writerow(["id", "label", "note"])
    written = []
    for node_id, label, note in rows:
        if not label.strip():
            continue  # an empty label is (rightly) an error
        writer.writerow([node_id, label, note])
        written.append((node_id, label.strip(), note.strip() or None))
    graph = parse_data_source(buffer.getvalue(), file_format, "nodes")
    assert [(n["id"], n["label"], n["attrs"]["note"]) for n in graph.nodes] == written


@st.composite
def valid_graphs(draw: st.DrawFn) -> GraphData:
    node_ids = draw(st.lists(ids, min_size=1, max_size=6, unique=True))
    partitions = draw(st.sets(st.sampled_from(node_ids)))
    plain = [n for n in node_ids if n not in partitions]
    nodes = tuple(
        node(
            n,
            layer=draw(st.sampled_from([None, "l1", "l2"])),
            is_partition=n in partitions,
            belongs_to=draw(st.sampled_from([None, *partitions])) if n not in partitions else None,
        )
        for n in node_ids
    )
    edges: tuple[dict[str, Any], ...] = ()
    if plain:
        pairs = draw(
            st.lists(st.tuples(st.sampled_from(plain), st.sampled_from(plain)), max_size=6)
        )
        edges = tuple(edge(f"e{i}", s, t) for i, (s, t) in enumerate(pairs))
    layers = tuple(layer(lid) for lid in draw(st.sets(st.sampled_from(["l1", "l2", "l3"]))))
    return GraphData(nodes, edges, layers)


@FAST
@given(graph=valid_graphs())
def test_merge_of_a_graph_with_itself_is_itself(graph: GraphData) -> None:
    assert merge_graphs([graph]) == graph
    assert merge_graphs([graph, graph]) == graph
    assert source_hash([graph]) == source_hash([GraphData.from_json(graph.to_json())])


transform_steps = st.lists(
    st.one_of(
        st.builds(
            lambda kind, layers: {"kind": kind, "params": {"layers": layers}},
            st.sampled_from(["keep_layers", "drop_layers"]),
            st.lists(st.sampled_from(["l1", "l2", "l3"]), max_size=2),
        ),
        st.sampled_from([{"kind": "drop_isolated_nodes"}, {"kind": "drop_partitions"}]),
    ),
    max_size=3,
)


@FAST
@given(graph=valid_graphs(), steps=transform_steps)
def test_transforms_never_leave_dangling_references(
    graph: GraphData, steps: list[dict[str, Any]]
) -> None:
    result = apply_transforms(graph, {"transforms": steps})
    ids_left = {n["id"] for n in result.nodes}
    assert merge_graphs([result]) == result  # every edge still valid
    assert all(n["belongs_to"] is None or n["belongs_to"] in ids_left for n in result.nodes)
    assert {n["id"] for n in result.nodes} <= {n["id"] for n in graph.nodes}
    assert result.edge_count <= graph.edge_count
