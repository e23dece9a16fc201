"""Pure data processing: parse data sources, merge graphs, hash inputs, apply transforms.

Executor actors call these functions and own everything around them (state, persistence,
publishing). Keeping this module free of actors, I/O, databases and logging means every rule
about what a file may contain can be tested directly and quickly, and the executors only have
to turn a `ProcessingError` into an `error` state whose message is this module's message.

The rules follow Layercake:

* csv/tsv files carry one table: nodes (`id`, `label`), edges (`id`, `source`, `target`) or
  layers (`label` and `id` or `layer`); json files carry a whole graph (`nodes`, `edges`,
  optional `layers` arrays). Both are normalised to the same dict shapes (see `GraphData`).
* Building a graph merges the upstream graphs (nodes by id, later wins; edges appended; layers
  by id) and rejects edges to missing or partition nodes.

Every error a person can cause is a `ProcessingError` whose message names the file format, the
row/column or array index, the problem and what to do about it: it ends up verbatim in the
editor's error badge, so it must make sense to someone who only has the file in front of them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson

__all__ = [
    "DATA_TYPES",
    "FILE_FORMATS",
    "TRANSFORM_KINDS",
    "GraphData",
    "ProcessingError",
    "apply_transforms",
    "merge_graphs",
    "parse_data_source",
    "source_hash",
    "validate_format",
]


class ProcessingError(ValueError):
    """A file or graph that cannot be processed; str(e) is a message for people."""


FILE_FORMATS = ("csv", "tsv", "json")
DATA_TYPES = ("nodes", "edges", "layers", "graph")
TRANSFORM_KINDS = ("keep_layers", "drop_layers", "drop_isolated_nodes", "drop_partitions")

# Which data types each file format can carry (Layercake: tables in csv/tsv, graphs in json).
_TABLE_FORMATS = ("csv", "tsv")
_TABLE_TYPES = ("nodes", "edges", "layers")
_SINGULAR = {"nodes": "node", "edges": "edge", "layers": "layer"}

# Known fields of each element, in the order of the normalised dicts. Layers take their id from
# `id`, or from `layer` when there is no `id` (Layercake's layer files use either).
_NODE_FIELDS = ("id", "label", "layer", "is_partition", "belongs_to", "weight", "comment")
_EDGE_FIELDS = ("id", "source", "target", "label", "layer", "weight", "comment")
_LAYER_FIELDS = ("id", "layer", "label", "background_color", "text_color", "border_color")
_FIELDS = {"nodes": _NODE_FIELDS, "edges": _EDGE_FIELDS, "layers": _LAYER_FIELDS}
_REQUIRED = {"nodes": ("id", "label"), "edges": ("id", "source", "target"), "layers": ("label",)}

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")
_SHOW_LIMIT = 60

JsonObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class GraphData:
    """A graph in the normalised shape every processing step produces and consumes.

    Node: {"id", "label", "layer", "is_partition", "belongs_to", "weight", "comment", "attrs"}.
    Edge: {"id", "source", "target", "label", "layer", "weight", "comment", "attrs"}.
    Layer: {"id", "label", "background_color", "text_color", "border_color", "attrs"}.
    Ids and labels are non-empty strings; other text fields are a string or None; weight is an
    int, a float or None; is_partition is a bool; attrs holds the columns/keys this module does
    not know, so that nothing a user uploaded is silently lost.

    The dataclass is frozen but the dicts are plain dicts shared between graphs (copying them at
    every step would cost more than it protects): treat them as read-only; every function here
    builds new dicts instead of changing existing ones.
    """

    nodes: tuple[JsonObject, ...] = ()
    edges: tuple[JsonObject, ...] = ()
    layers: tuple[JsonObject, ...] = ()

    def __post_init__(self) -> None:
        # Callers often have lists; tuples keep equality (and immutability of the sequence) sane.
        for name in ("nodes", "edges", "layers"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))

    def to_json(self) -> dict[str, list[JsonObject]]:
        """The graph as a JSON-ready object, as stored in `graph_json` columns."""
        return {"nodes": list(self.nodes), "edges": list(self.edges), "layers": list(self.layers)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> GraphData:
        """Read back what `to_json` produced (None, e.g. a graph never computed, is empty).

        The object is normalised like an uploaded json graph, so a stored graph written by an
        older version, or by hand, either comes back in today's shape or fails with a
        `ProcessingError` instead of breaking a later step; missing arrays count as empty.
        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ProcessingError(
                f"stored graph must be an object with arrays nodes, edges and layers, "
                f"got {_kind(data)}; recompute the graph"
            )
        return _graph_from_object(data, "stored graph", arrays_required=False)

    @property
    def node_count(self) -> int:
        """Number of nodes, as stored in the `graphs` row and shown in the editor."""
        return len(self.nodes)

    @property
    def edge_count(self) -> int:
        """Number of edges, as stored in the `graphs` row and shown in the editor."""
        return len(self.edges)


# --------------------------------------------------------------------------------------------
# Formats


def validate_format(file_format: str, data_type: str) -> None:
    """Reject an unknown file format or data type, or a pair that cannot go together.

    The API calls this before storing an upload, so the message names the GraphQL input field
    (`fileFormat`, `dataType`) and the values that would have been accepted.
    """
    if file_format not in FILE_FORMATS:
        raise ProcessingError(
            f"fileFormat {_show(file_format)} is not supported: use csv, tsv or json"
            + _lowercase_hint(file_format, FILE_FORMATS)
        )
    if data_type not in DATA_TYPES:
        raise ProcessingError(
            f"dataType {_show(data_type)} is not supported: use nodes, edges, layers or graph"
            + _lowercase_hint(data_type, DATA_TYPES)
        )
    if file_format in _TABLE_FORMATS and data_type == "graph":
        raise ProcessingError(
            f"dataType 'graph' cannot be read from a {file_format} file: {file_format} files "
            f"carry nodes, edges or layers; upload a whole graph as json"
        )
    if file_format == "json" and data_type != "graph":
        raise ProcessingError(
            f"dataType {_show(data_type)} cannot be read from a json file: json files carry a "
            f"whole graph (dataType graph); upload {data_type} as csv or tsv"
        )


def _lowercase_hint(value: object, allowed: tuple[str, ...]) -> str:
    """Explain the one near miss people actually make: the right value in capitals."""
    if isinstance(value, str) and value.strip().lower() in allowed:
        return f" (write {value.strip().lower()!r} in lower case)"
    return ""


def parse_data_source(content: str, file_format: str, data_type: str) -> GraphData:
    """Parse an uploaded file into a graph: a table file fills one of the three arrays.

    Anything wrong with the file raises `ProcessingError`; nothing else is raised for any text.
    """
    if not isinstance(content, str):
        raise TypeError(f"content must be str (decode the file first), got {type(content)}")
    validate_format(file_format, data_type)
    if file_format == "json":
        return _parse_graph_json(content)
    return _parse_table(content, file_format, data_type)


# --------------------------------------------------------------------------------------------
# Text checks shared by every format


def _check_text(content: str, where: Callable[[int, int], str]) -> None:
    """Reject characters the database cannot store, before they get that far.

    PostgreSQL refuses NUL in text and JSON columns, and orjson refuses lone surrogates (which
    a str can hold after a lossy decode); both would otherwise crash the executor long after
    parsing "succeeded". `where(line, column)` words the location for the file's format.
    """
    nul = content.find("\x00")
    if nul >= 0:
        line, column = _position(content, nul)
        raise ProcessingError(
            f"{where(line, column)}: contains a NUL character (\\x00), which cannot be stored; "
            f"the file looks binary or corrupted, save it as UTF-8 text"
        )
    try:
        content.encode("utf-8")
    except UnicodeEncodeError as exc:
        line, column = _position(content, exc.start)
        raise ProcessingError(
            f"{where(line, column)}: contains {content[exc.start]!r}, which is not a valid "
            f"Unicode character; save the file as UTF-8 text"
        ) from None


def _position(content: str, index: int) -> tuple[int, int]:
    """1-based (line, column) of `index`, counting \\n, \\r\\n and \\r as an editor does."""
    before = content[:index]
    line = 1 + before.count("\n") + before.count("\r") - before.count("\r\n")
    column = index - max(before.rfind("\n"), before.rfind("\r"))
    return line, column


def _strip_bom(content: str) -> str:
    """Spreadsheets and Windows editors prefix UTF-8 files with a BOM; it is not data."""
    return content[1:] if content.startswith("\ufeff") else content


# --------------------------------------------------------------------------------------------
# csv / tsv


def _parse_table(content: str, file_format: str, data_type: str) -> GraphData:
    """Parse a csv/tsv table of nodes, edges or layers (header row first)."""
    label = f"{data_type} {file_format}"
    _check_text(content, lambda line, column: f"{label}, row {line} (character {column})")
    records = _records(_strip_bom(content), file_format, label)
    first = next(records, None)
    if first is None:
        raise ProcessingError(
            f"{label} file is empty: expected a header row with columns "
            f"{_expected_columns(data_type)}"
        )
    header_line, header = first
    columns = _Columns.from_header(header, header_line, file_format, data_type)

    singular = _SINGULAR[data_type]
    items: list[JsonObject] = []
    first_seen: dict[str, int] = {}
    for line, fields in records:
        where = f"{label}, row {line}"
        if len(fields) != columns.width:
            raise ProcessingError(
                f"{where} has {len(fields)} fields but the header has {columns.width}; "
                + _field_count_hint(file_format, len(fields) > columns.width)
            )
        values, attrs = columns.split(fields, where)

        def empty(field: str, where: str = where) -> ProcessingError:
            return ProcessingError(
                f"{where}: empty value in required column {field}; fill it in or delete the row"
            )

        item = _build(data_type, values, attrs, where, empty, columns.layer_id_name)
        seen = first_seen.setdefault(item["id"], line)
        if seen != line:
            raise ProcessingError(
                f"{where}: duplicate {singular} id {_show(item['id'])} (first seen on row "
                f"{seen}); ids must be unique within a file, rename or remove one of them"
            )
        items.append(item)
    return GraphData(**{data_type: tuple(items)})


def _records(content: str, file_format: str, label: str) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number where the record starts, fields) for every non-blank record.

    Line numbers are those an editor shows (a quoted value may span lines; the record is
    reported where it starts). Rows whose fields are all blank (empty lines, or the `,,,` lines
    spreadsheets leave behind) are skipped. csv errors become messages with the row.
    """
    reader = csv.reader(
        io.StringIO(content, newline=""),
        delimiter="," if file_format == "csv" else "\t",
        skipinitialspace=True,
        strict=True,
    )
    previous_end = 0
    while True:
        start = previous_end + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            message = _csv_error_message(str(exc), label, start, reader.line_num)
            raise ProcessingError(message) from None
        previous_end = reader.line_num
        if any(field.strip() for field in fields):
            yield start, fields


def _csv_error_message(error: str, label: str, start: int, line: int) -> str:
    """Turn the csv module's terse errors into something a spreadsheet user can act on."""
    if "unexpected end of data" in error:
        return (
            f"{label}, row {start}: a quoted value is never closed (the file ends inside "
            f'quotes); add the closing double quote, and double any quote inside a value ("")'
        )
    if "expected after" in error:
        return (
            f"{label}, row {line}: badly quoted value ({error}); a value that starts with a "
            f"double quote must end with one right before the separator, and quotes inside it "
            f'must be doubled ("")'
        )
    if "field larger than field limit" in error:
        return (
            f"{label}, row {start}: a value is longer than {csv.field_size_limit()} characters; "
            f"check for a missing closing quote"
        )
    return f"{label}, row {line}: cannot read the row ({error}); check its quoting"


def _field_count_hint(file_format: str, too_many: bool) -> str:
    """What usually causes a row to have the wrong number of fields."""
    if too_many and file_format == "csv":
        return 'put values that contain commas in double quotes, e.g. "Smith, John"'
    if too_many:
        return "values must not contain tabs unless they are in double quotes"
    return "give every column a value on each row (an empty value between separators is fine)"


def _expected_columns(data_type: str) -> str:
    """The required columns of a table, as the empty-file message lists them."""
    if data_type == "layers":
        return "id (or layer), label"
    return ", ".join(_REQUIRED[data_type])


def _canon(name: str) -> str:
    """Header/key matching ignores case, spaces, '-' and '_': `Is Partition`, `isPartition`."""
    return re.sub(r"[\s_\-]", "", name.lower())


class _Columns:
    """Where each known field sits in a table's rows, and which columns are extra attrs."""

    def __init__(
        self,
        width: int,
        known: dict[str, int],
        extras: list[tuple[int, str]],
        unnamed: list[int],
        layer_id_name: str,
    ) -> None:
        self.width = width
        self.known = known
        self.extras = extras
        self.unnamed = unnamed
        self.layer_id_name = layer_id_name

    @classmethod
    def from_header(
        cls, header: list[str], line: int, file_format: str, data_type: str
    ) -> _Columns:
        """Match header names to fields; reject duplicates and missing required columns."""
        label = f"{data_type} {file_format}"
        by_canon = {_canon(field): field for field in _FIELDS[data_type]}
        names = [name.strip() for name in header]
        known: dict[str, int] = {}
        extras: list[tuple[int, str]] = []
        unnamed: list[int] = []
        seen: dict[str, int] = {}
        for index, name in enumerate(names):
            if not name:
                unnamed.append(index)
                continue
            key = _canon(name) or name
            if key in seen:
                other = seen[key]
                raise ProcessingError(
                    f"{label} header (row {line}) has more than one column for {name!r}: "
                    f"{names[other]!r} (column {other + 1}) and {name!r} (column {index + 1}); "
                    f"remove or rename one of them"
                )
            seen[key] = index
            if key in by_canon:
                known[by_canon[key]] = index
            else:
                extras.append((index, name))

        missing = [f"'{field}'" for field in _REQUIRED[data_type] if field not in known]
        if data_type == "layers" and "id" not in known and "layer" not in known:
            missing.insert(0, "'id' (or 'layer')")
        if missing:
            found = ", ".join(_column_name(name) for name in names if name) or "none"
            plural = "column" if len(missing) == 1 else "columns"
            raise ProcessingError(
                f"{label} is missing required {plural} {_and(missing)} (found columns: "
                f"{found}); add {'it' if len(missing) == 1 else 'them'} to the header row"
                + _header_hints(names, file_format, data_type)
            )
        layer_id_name = "'id'" if "id" in known else "'layer'"
        if data_type == "layers" and "id" in known and "layer" in known:
            layer_id_name = "'id' (or 'layer')"
        return cls(len(header), known, extras, unnamed, layer_id_name)

    def split(self, fields: list[str], where: str) -> tuple[dict[str, str | None], JsonObject]:
        """Known field values and extra attrs of one row, stripped; empty values are None."""
        for index in self.unnamed:
            if fields[index].strip():
                raise ProcessingError(
                    f"{where}: value {_show(fields[index].strip())} is in column {index + 1}, "
                    f"which has no name in the header; name the column or delete the value"
                )
        values = {field: fields[index].strip() or None for field, index in self.known.items()}
        attrs = {name: fields[index].strip() or None for index, name in self.extras}
        return values, attrs


def _header_hints(names: list[str], file_format: str, data_type: str) -> str:
    """Guess the usual causes of missing columns: wrong separator or wrong data type."""
    hints: list[str] = []
    joined = "".join(names)
    if file_format == "csv" and "\t" in joined:
        hints.append("the header contains tabs: if the file is tab-separated, upload it as tsv")
    if file_format == "tsv" and "," in joined:
        hints.append("the header contains commas: if the file is comma-separated, upload it as csv")
    canon = {_canon(name) for name in names if name}
    for other in _TABLE_TYPES:
        if other == data_type:
            continue
        needed = {_canon(field) for field in _REQUIRED[other]}
        if needed <= canon and (other != "layers" or canon & {"id", "layer"}):
            article = "an" if other[0] in "aeiou" else "a"
            hints.append(
                f"these look like the columns of {article} {other} file: check the data type"
            )
    return "".join(f"; {hint}" for hint in hints)


def _column_name(name: str) -> str:
    """A header name as written, unless it hides tabs or other invisible characters."""
    return name if name.isprintable() else repr(name)


def _and(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# --------------------------------------------------------------------------------------------
# json


def _parse_graph_json(content: str) -> GraphData:
    """Parse a json graph file: an object with `nodes`, `edges` and optional `layers`."""
    label = "json graph"
    _check_text(content, lambda line, column: f"{label}: line {line}, column {column}")
    content = _strip_bom(content)
    if not content.strip():
        raise ProcessingError(
            f"{label} file is empty: expected a JSON object with arrays nodes, edges and layers"
        )
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise ProcessingError(
            f"{label} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}; "
            f"fix the syntax there (a JSON validator shows the exact spot)"
        ) from None
    if not isinstance(data, dict):
        raise ProcessingError(
            f"{label} must be an object with arrays nodes, edges and layers, got {_kind(data)}; "
            f'write it as {{"nodes": [...], "edges": [...], "layers": [...]}}'
        )
    if "\\u0000" in content:  # an escaped NUL: as unstorable as a raw one
        _reject_nul(data, label)
    return _graph_from_object(data, label, arrays_required=True)


def _reject_nul(data: object, label: str) -> None:
    """Find the first string (or key) holding NUL and name its path."""
    stack: list[tuple[str, object]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                raise ProcessingError(
                    f"{label}: {path or 'the document'} contains a NUL character (\\u0000), "
                    f"which cannot be stored; remove it"
                )
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):
                child = f"{path}.{key}" if path else key
                if "\x00" in key:
                    raise ProcessingError(
                        f"{label}: key {child!r} contains a NUL character (\\u0000), which "
                        f"cannot be stored; remove it"
                    )
                stack.append((child, item))
        elif isinstance(value, list):
            stack.extend(
                (f"{path}[{index}]", item) for index, item in reversed(list(enumerate(value)))
            )


def _graph_from_object(data: Mapping[str, Any], label: str, arrays_required: bool) -> GraphData:
    """Normalise a graph object (uploaded or stored) into `GraphData`."""
    arrays: dict[str, tuple[JsonObject, ...]] = {}
    for data_type in ("nodes", "edges", "layers"):
        elements = data.get(data_type)
        if elements is None:
            if arrays_required and data_type != "layers":
                raise ProcessingError(
                    f'{label} has no {data_type!r} array; a graph needs "nodes" and "edges" '
                    f'arrays ("layers" is optional), e.g. {{"nodes": [], "edges": []}}'
                )
            elements = []
        if not isinstance(elements, list | tuple):
            raise ProcessingError(f"{label}: {data_type!r} must be an array, got {_kind(elements)}")
        arrays[data_type] = _elements_from_json(elements, data_type, label)
    return GraphData(**arrays)


def _elements_from_json(
    elements: Sequence[Any], data_type: str, label: str
) -> tuple[JsonObject, ...]:
    """Normalise one array of a json graph, with the same rules as a csv table."""
    by_canon = {_canon(field): field for field in _FIELDS[data_type]}
    singular = _SINGULAR[data_type]
    items: list[JsonObject] = []
    first_seen: dict[str, int] = {}
    for index, element in enumerate(elements):
        where = f"{label}, {data_type}[{index}]"
        if not isinstance(element, Mapping):
            raise ProcessingError(
                f"{where} must be an object, got {_kind(element)}; each {singular} is "
                f'written as {{"id": ..., ...}}'
            )
        values: dict[str, Any] = {}
        attrs: JsonObject = {}
        spelled: dict[str, str] = {}
        extras: JsonObject = {}
        for key, value in element.items():
            field = by_canon.get(_canon(key))
            if field is None:
                if key == "attrs":
                    if value is None:
                        continue
                    if not isinstance(value, Mapping):
                        raise ProcessingError(
                            f"{where}: 'attrs' must be an object, got {_kind(value)}"
                        )
                    attrs.update(value)
                else:
                    extras[key] = value
                continue
            if field in spelled:
                raise ProcessingError(
                    f"{where} has both {spelled[field]!r} and {key!r}, which mean the same "
                    f"field; keep one of them"
                )
            spelled[field] = key
            values[field] = value
        attrs.update(extras)

        def missing(field: str, where: str = where, values: JsonObject = values) -> ProcessingError:
            names = re.findall(r"'(\w+)'", field)
            if any(values.get(name) is not None for name in names):  # present but ""
                return ProcessingError(f"{where} has an empty {field}; give it a value")
            return ProcessingError(f"{where} is missing {field}; add it or remove the {singular}")

        layer_id_name = "'id' (or 'layer')" if data_type == "layers" else "'id'"
        item = _build(data_type, values, attrs, where, missing, layer_id_name)
        seen = first_seen.setdefault(item["id"], index)
        if seen != index:
            raise ProcessingError(
                f"{where}: duplicate {singular} id {_show(item['id'])} (first seen at "
                f"{data_type}[{seen}]); ids must be unique, rename or remove one of them"
            )
        items.append(item)
    return tuple(items)


# --------------------------------------------------------------------------------------------
# Building normalised elements (shared by csv/tsv and json)

_Missing = Callable[[str], ProcessingError]


def _build(
    data_type: str,
    values: Mapping[str, Any],
    attrs: JsonObject,
    where: str,
    missing: _Missing,
    layer_id_name: str,
) -> JsonObject:
    """One normalised node/edge/layer dict from its raw field values.

    `missing(field)` words a missing required value for the source format (an empty csv cell
    reads differently from an absent json key); every other message is shared.
    """
    if data_type == "nodes":
        return {
            "id": _required_id(values.get("id"), "'id'", where, missing),
            "label": _required_text(values.get("label"), "'label'", where, missing),
            "layer": _optional_text(values.get("layer"), "layer", where),
            "is_partition": _flag(values.get("is_partition"), "is_partition", where),
            "belongs_to": _optional_text(values.get("belongs_to"), "belongs_to", where),
            "weight": _number(values.get("weight"), "weight", where),
            "comment": _optional_text(values.get("comment"), "comment", where),
            "attrs": attrs,
        }
    if data_type == "edges":
        return {
            "id": _required_id(values.get("id"), "'id'", where, missing),
            "source": _required_id(values.get("source"), "'source'", where, missing),
            "target": _required_id(values.get("target"), "'target'", where, missing),
            "label": _optional_text(values.get("label"), "label", where),
            "layer": _optional_text(values.get("layer"), "layer", where),
            "weight": _number(values.get("weight"), "weight", where),
            "comment": _optional_text(values.get("comment"), "comment", where),
            "attrs": attrs,
        }
    layer_id = values.get("id")
    if layer_id is None or layer_id == "":
        layer_id = values.get("layer")
    return {
        "id": _required_id(layer_id, layer_id_name, where, missing),
        "label": _required_text(values.get("label"), "'label'", where, missing),
        "background_color": _optional_text(
            values.get("background_color"), "background_color", where
        ),
        "text_color": _optional_text(values.get("text_color"), "text_color", where),
        "border_color": _optional_text(values.get("border_color"), "border_color", where),
        "attrs": attrs,
    }


def _required_id(value: Any, field: str, where: str, missing: _Missing) -> str:
    """Ids are strings; json integers are accepted and turned into strings so they match csv."""
    if value is None or value == "":
        raise missing(field)
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    shown = _show(value) if isinstance(value, float) else _kind(value)
    raise ProcessingError(f"{where}: {field} must be a string or an integer, got {shown}")


def _required_text(value: Any, field: str, where: str, missing: _Missing) -> str:
    """A required label: non-empty text (a json number is taken as its text)."""
    text = _optional_text(value, field.strip("'"), where)
    if text is None:
        raise missing(field)
    return text


def _optional_text(value: Any, field: str, where: str) -> str | None:
    """Optional text: empty and null are None; json numbers become their text."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ProcessingError(f"{where}: {field!r} must be a string, got {_kind(value)}")


def _flag(value: Any, field: str, where: str) -> bool:
    """A boolean written as true/false, 1/0 or yes/no (any case); empty means false."""
    if value is None or value == "":
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    shown = _show(value) if isinstance(value, str | int | float) else _kind(value)
    raise ProcessingError(
        f"{where}: {field!r} must be true or false (1/0 and yes/no work too), got {shown}"
    )


def _number(value: Any, field: str, where: str) -> int | float | None:
    """A finite number; integral text stays an int so `3` does not come back as `3.0`."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, str):
        text = value.strip()
        if _INTEGER.fullmatch(text):
            return int(text)
        if _NUMBER.fullmatch(text):
            number = float(text)
            if math.isfinite(number):
                return number
    shown = _show(value) if isinstance(value, str | float) else _kind(value)
    raise ProcessingError(
        f"{where}: {field!r} must be a number, got {shown}; write a number such as 2 or 0.5 "
        f"(with a dot), or leave it empty"
    )


def _show(value: object) -> str:
    """A value quoted for a message, shortened so a huge cell cannot flood the badge."""
    if isinstance(value, str) and len(value) > _SHOW_LIMIT:
        return repr(value[:_SHOW_LIMIT]) + "..."
    return repr(value)


def _kind(value: object) -> str:
    """A JSON-ish name for the type of a value, for people who never saw Python."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    return type(value).__name__


# --------------------------------------------------------------------------------------------
# Merging and hashing


def merge_graphs(inputs: Sequence[GraphData]) -> GraphData:
    """Merge upstream graphs the way a Graph/Merge node does, then check the edges.

    Nodes and layers are merged by id and edges are appended; an element whose id was already
    seen replaces the earlier one but keeps its place, so the order is first-seen order and a
    later upstream can correct an earlier one. The merged graph must have every edge between
    two existing, non-partition nodes.
    """
    nodes: dict[str, JsonObject] = {}
    edges: dict[str, JsonObject] = {}
    layers: dict[str, JsonObject] = {}
    for graph in inputs:
        for node in graph.nodes:
            nodes[node["id"]] = node
        for edge in graph.edges:
            edges[edge["id"]] = edge
        for layer in graph.layers:
            layers[layer["id"]] = layer
    _check_edges(nodes, edges.values())
    return GraphData(tuple(nodes.values()), tuple(edges.values()), tuple(layers.values()))


def _check_edges(nodes: Mapping[str, JsonObject], edges: Iterable[JsonObject]) -> None:
    """Reject edges to missing nodes first (the graph is broken), then edges to partitions."""
    dangling: list[tuple[JsonObject, str, str]] = []
    to_partition: list[tuple[JsonObject, str, str]] = []
    for edge in edges:
        for end in ("source", "target"):
            node = nodes.get(edge[end])
            if node is None:
                dangling.append((edge, end, edge[end]))
                break
        else:
            for end in ("source", "target"):
                if nodes[edge[end]].get("is_partition"):
                    to_partition.append((edge, end, edge[end]))
                    break
    if dangling:
        edge, end, node_id = dangling[0]
        others = _others(len(dangling) - 1, "points to a missing node", "point to missing nodes")
        raise ProcessingError(
            f"edge {_show(edge['id'])} has {end} {_show(node_id)}, which is not a node of the "
            f"merged graph ({others}); add the missing nodes to an upstream data source or "
            f"remove those edges"
        )
    if to_partition:
        edge, end, node_id = to_partition[0]
        others = _others(len(to_partition) - 1, "touches a partition node", "touch partition nodes")
        raise ProcessingError(
            f"edge {_show(edge['id'])} has {end} {_show(node_id)}, which is a partition node "
            f"({others}); partition nodes group other nodes through belongs_to and cannot be "
            f"the end of an edge: connect the edge to a node inside the partition, or set "
            f"is_partition to false"
        )


def _others(count: int, singular: str, plural: str) -> str:
    """How many more edges share the problem: 'no other edge ...', '3 other edges also ...'."""
    if count == 0:
        return f"no other edge {singular}"
    if count == 1:
        return f"1 other edge also {singular}"
    return f"{count} other edges also {plural}"


def source_hash(inputs: Sequence[GraphData], salt: str = "") -> str:
    """A fingerprint of a build's inputs, so an unchanged graph is not rebuilt.

    sha256 of the canonical JSON (sorted keys) of the inputs, in order (order matters: later
    inputs win in a merge), followed by `salt` (e.g. the node's config, which also changes the
    result). The JSON array is self-delimiting, so input and salt can never be confused.
    """
    payload = orjson.dumps([graph.to_json() for graph in inputs], option=orjson.OPT_SORT_KEYS)
    digest = hashlib.sha256(payload)
    digest.update(salt.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Transforms

_Step = Callable[[GraphData], GraphData]
_PARAMS = {
    "keep_layers": ("layers",),
    "drop_layers": ("layers",),
    "drop_isolated_nodes": (),
    "drop_partitions": (),
}


def apply_transforms(graph: GraphData, config: Mapping[str, Any] | None) -> GraphData:
    """Apply a TransformNode's `{"transforms": [{"kind", "params"}, ...]}` in order.

    The whole list is validated before anything runs, so a typo in the last transform is
    reported without doing the work of the first ones. Transforms never leave dangling
    references: edges touching a removed node are removed and `belongs_to` pointing to a
    removed node is cleared.
    """
    for step in _parse_transforms(config):
        graph = step(graph)
    return graph


def _parse_transforms(config: Mapping[str, Any] | None) -> list[_Step]:
    """Validate a transform config into the steps to run."""
    if config is None:
        return []
    if not isinstance(config, Mapping):
        raise ProcessingError(
            f'transform config must be an object like {{"transforms": [...]}}, got {_kind(config)}'
        )
    transforms = config.get("transforms")
    if transforms is None:
        return []
    if not isinstance(transforms, list | tuple):
        raise ProcessingError(
            f'transforms must be a list of {{"kind": ..., "params": {{...}}}} objects, '
            f"got {_kind(transforms)}"
        )
    kinds = ", ".join(TRANSFORM_KINDS)
    steps: list[_Step] = []
    for index, transform in enumerate(transforms):
        where = f"transforms[{index}]"
        if not isinstance(transform, Mapping):
            raise ProcessingError(
                f'{where} must be an object like {{"kind": "keep_layers", "params": {{...}}}}, '
                f"got {_kind(transform)}; supported kinds: {kinds}"
            )
        kind = transform.get("kind")
        if kind is None:
            raise ProcessingError(f"{where} has no 'kind'; supported kinds: {kinds}")
        if not isinstance(kind, str) or kind not in _PARAMS:
            raise ProcessingError(f"{where}: unknown kind {_show(kind)}; supported kinds: {kinds}")
        params = transform.get("params")
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise ProcessingError(
                f"{where} ({kind}): 'params' must be an object, got {_kind(params)}"
            )
        allowed = _PARAMS[kind]
        takes = f"takes only {_and([repr(p) for p in allowed])}" if allowed else "takes no params"
        for key in params:
            if key not in allowed:
                raise ProcessingError(
                    f"{where} ({kind}): unknown param {_show(key)}; {kind} {takes}"
                )
        if kind in ("keep_layers", "drop_layers"):
            layer_ids = _layer_ids(params, f"{where} ({kind})")
            steps.append(partial(_filter_layers, layer_ids=layer_ids, keep=kind == "keep_layers"))
        elif kind == "drop_isolated_nodes":
            steps.append(_drop_isolated_nodes)
        else:
            steps.append(_drop_partitions)
    return steps


def _layer_ids(params: Mapping[str, Any], where: str) -> frozenset[str]:
    """params.layers: a list of layer ids (strings; json integers accepted, as for ids)."""
    if "layers" not in params or params["layers"] is None:
        raise ProcessingError(
            f'{where}: params.layers is missing; give the layer ids, e.g. {{"layers": ["core"]}}'
        )
    layers = params["layers"]
    if not isinstance(layers, list | tuple):
        example = ""
        if isinstance(layers, str):
            example = f" (write {orjson.dumps([layers]).decode()})"
        raise ProcessingError(
            f"{where}: params.layers must be a list of layer ids, got {_kind(layers)}{example}"
        )
    ids: set[str] = set()
    for position, layer in enumerate(layers):
        if isinstance(layer, str):
            ids.add(layer)
        elif isinstance(layer, int) and not isinstance(layer, bool):
            ids.add(str(layer))
        else:
            raise ProcessingError(
                f"{where}: params.layers[{position}] must be a layer id (a string), "
                f"got {_kind(layer)}"
            )
    return frozenset(ids)


def _filter_layers(graph: GraphData, layer_ids: frozenset[str], keep: bool) -> GraphData:
    """keep_layers / drop_layers: select nodes and layer definitions by layer id."""
    nodes = [node for node in graph.nodes if (node.get("layer") in layer_ids) == keep]
    layers = tuple(layer for layer in graph.layers if (layer["id"] in layer_ids) == keep)
    return _restrict(graph, nodes, layers)


def _drop_isolated_nodes(graph: GraphData) -> GraphData:
    """Remove nodes no edge touches, keeping the nodes that contain a kept node.

    A partition never has edges (that is the rule), so a literal reading would delete every
    group; instead a node is kept if an edge touches it or a kept node belongs to it
    (transitively), which is what "isolated" means to someone looking at the drawing.
    """
    by_id = {node["id"]: node for node in graph.nodes}
    kept: set[str] = set()
    for edge in graph.edges:
        for end in (edge["source"], edge["target"]):
            # Walk up belongs_to from each touched node; stop at a node already kept (cycles).
            current = end
            while current in by_id and current not in kept:
                kept.add(current)
                current = by_id[current].get("belongs_to")
    return _restrict(graph, [node for node in graph.nodes if node["id"] in kept], graph.layers)


def _drop_partitions(graph: GraphData) -> GraphData:
    """Remove partition nodes, the edges touching them and belongs_to pointing to them."""
    nodes = [node for node in graph.nodes if not node.get("is_partition")]
    return _restrict(graph, nodes, graph.layers)


def _restrict(
    graph: GraphData, nodes: list[JsonObject], layers: tuple[JsonObject, ...]
) -> GraphData:
    """The graph with only `nodes`, minus edges and belongs_to that pointed to removed nodes."""
    kept = {node["id"] for node in nodes}
    removed = {node["id"] for node in graph.nodes} - kept
    if not removed:
        return GraphData(tuple(nodes), graph.edges, layers)
    edges = tuple(
        edge
        for edge in graph.edges
        if edge["source"] not in removed and edge["target"] not in removed
    )
    nodes = [
        {**node, "belongs_to": None} if node.get("belongs_to") in removed else node
        for node in nodes
    ]
    return GraphData(tuple(nodes), edges, layers)
