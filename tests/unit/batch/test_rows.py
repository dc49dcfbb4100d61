"""A batch's inputs: JSONL, CSV and Parquet read as rows, mapped onto the workflow's declared inputs."""

from __future__ import annotations

import hashlib
import json
import resource
import sys
from pathlib import Path
from typing import Any

import pytest

from modelyard.batch import rows as rows_module
from modelyard.batch.rows import InputsFile, RowsError, inspect_inputs, parse_mapping, read_rows
from modelyard.workflows.spec import REQUIRED, InputSpec, WorkflowSpec


def spec(**inputs: tuple[str, Any]) -> WorkflowSpec:
    """A workflow with the given inputs: name=(type, default) (REQUIRED for none)."""
    declared = {name: InputSpec(name, kind, default) for name, (kind, default) in inputs.items()}
    return WorkflowSpec(name="t", steps={}, inputs=declared)


TICKET = spec(text=("string", REQUIRED), n=("integer", 1), score=("number", 0.0), flag=("boolean", False))


def rows_of(path: Path, workflow: WorkflowSpec = TICKET, mapping: dict[str, str] | None = None) -> list[Any]:
    inputs = inspect_inputs(path, workflow, mapping or {})
    return list(read_rows(inputs, workflow, mapping or {}))


def error_of(path: Path, workflow: WorkflowSpec = TICKET, mapping: dict[str, str] | None = None) -> str:
    with pytest.raises(RowsError) as caught:
        rows_of(path, workflow, mapping)
    return str(caught.value)


# --------------------------------------------------------------------------- --map


def test_parse_mapping_reads_pairs_and_keeps_the_column_verbatim() -> None:
    assert parse_mapping(["text=Ticket Body", " n =count", "flag=a=b"]) == {
        "text": "Ticket Body",
        "n": "count",
        "flag": "a=b",
    }
    assert parse_mapping([]) == {}


@pytest.mark.parametrize("pair", ["text", "=body", "text=", "text=  "])
def test_parse_mapping_refuses_a_malformed_pair(pair: str) -> None:
    with pytest.raises(RowsError, match="INPUT=COLUMN"):
        parse_mapping([pair])


def test_parse_mapping_refuses_one_input_mapped_to_two_columns() -> None:
    with pytest.raises(RowsError, match="mapped twice"):
        parse_mapping(["text=a", "text=b"])


def test_mapping_errors_are_all_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"body": "x", "other": 1}\n')
    message = error_of(path, TICKET, {"nope": "body", "n": "missing"})
    assert "the workflow has no input 'nope'" in message
    assert "--map n=missing: no column 'missing'" in message
    assert "required input 'text' has no column 'text'" in message and "--map text=COLUMN" in message
    assert "body, other" in message
    assert all(line.startswith(f"{path}: ") for line in message.splitlines())


def test_a_mapped_column_feeds_the_input_and_unknown_columns_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"body": "hi", "text": "not me", "junk": [1]}\n{"junk": 2}\n')
    assert rows_of(path, TICKET, {"text": "body"}) == [(0, {"text": "hi"}), (1, {})]


def test_an_optional_input_needs_no_column(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("text\nhello\n")
    assert rows_of(path) == [(0, {"text": "hello"})]


def test_unknown_formats_and_missing_files_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "in.xlsx").write_text("x")
    assert "unknown inputs format '.xlsx'" in error_of(tmp_path / "in.xlsx")
    assert "cannot read" in error_of(tmp_path / "absent.jsonl")


# --------------------------------------------------------------------------- JSON lines


def test_jsonl_rows_are_numbered_from_zero_skipping_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "a", "n": 2}\n\n   \n{"text": "b", "n": 2.0, "score": 3}\r\n{"text": "c"}')
    inputs = inspect_inputs(path, TICKET, {})
    assert inputs.rows == 3 and inputs.format == "jsonl"
    assert inputs.columns == ("text", "n", "score")
    assert inputs.fingerprint == hashlib.sha256(path.read_bytes()).hexdigest()
    # JSON types are kept; an integer spelled 2.0 is an integer
    assert list(read_rows(inputs, TICKET, {})) == [
        (0, {"text": "a", "n": 2}),
        (1, {"text": "b", "n": 2, "score": 3}),
        (2, {"text": "c"}),
    ]


def test_jsonl_null_is_absent_and_a_wrong_type_is_passed_for_the_row_to_fail(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": null, "n": "three", "flag": 1}\n')
    assert rows_of(path) == [(0, {"n": "three", "flag": 1})]


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("[1, 2]", "expected a JSON object, got an array"),
        ('"text"', "expected a JSON object, got a string"),
        ('{"text": ', "not JSON"),
        ('{"text": NaN}', "not JSON"),
        ("[" * 100_000, "nested too deeply|not JSON"),
    ],
)
def test_a_bad_jsonl_line_is_named_by_file_and_line(tmp_path: Path, line: str, why: str) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "ok"}\n\n' + line + "\n")
    message = error_of(path)
    assert message.startswith(f"{path}:3: ")
    assert any(part in message for part in why.split("|"))


def test_invalid_utf8_is_named_by_line(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    assert error_of(path).startswith(f"{path}:2: not UTF-8")


def test_a_line_over_the_bound_is_refused_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rows_module, "MAX_RECORD_BYTES", 64)
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "short"}\n{"text": "' + "x" * 100 + '"}\n')
    assert error_of(path).startswith(f"{path}:2: line longer than")


def test_a_line_exactly_at_the_bound_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    line = '{"text": "' + "x" * 50 + '"}\n'
    monkeypatch.setattr(rows_module, "MAX_RECORD_BYTES", len(line))
    path = tmp_path / "in.jsonl"
    path.write_text(line + line.rstrip("\n"))
    assert [index for index, _ in rows_of(path)] == [0, 1]


# --------------------------------------------------------------------------- CSV


def test_csv_cells_become_the_declared_types(tmp_path: Path) -> None:
    workflow = spec(
        text=("string", REQUIRED),
        n=("integer", 1),
        score=("number", 0.0),
        flag=("boolean", False),
        tags=("array", []),
        meta=("object", {}),
    )
    path = tmp_path / "in.csv"
    path.write_text(
        "text,n,score,flag,tags,meta\n"
        '007,42,2.5,yes,"[""a"", 1]","{""k"": true}"\n'
        "x, -3 ,7,FALSE,[],{}\n"
        "y,3.0,1e3,1,,\n"
    )
    assert rows_of(path, workflow) == [
        (0, {"text": "007", "n": 42, "score": 2.5, "flag": True, "tags": ["a", 1], "meta": {"k": True}}),
        (1, {"text": "x", "n": -3, "score": 7, "flag": False, "tags": [], "meta": {}}),
        (2, {"text": "y", "n": 3, "score": 1000.0, "flag": True}),
    ]


def test_a_csv_cell_that_does_not_convert_stays_text(tmp_path: Path) -> None:
    workflow = spec(
        text=("string", REQUIRED), n=("integer", 1), score=("number", 0.0), flag=("boolean", False), tags=("array", [])
    )
    path = tmp_path / "in.csv"
    path.write_text('text,n,score,flag,tags\n,2.5,nan,maybe,"{""a"": 1}"\n')
    # an empty string input is text; each unconvertible cell is passed as its text for the row to fail
    assert rows_of(path, workflow) == [
        (0, {"text": "", "n": "2.5", "score": "nan", "flag": "maybe", "tags": '{"a": 1}'})
    ]


def test_csv_with_bom_quoted_newlines_blank_lines_and_short_records(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(b'\xef\xbb\xbftext,n\r\n"two\r\nlines",5\r\n\r\nonly text\r\n"caf\xc3\xa9",6,extra\r\n')
    inputs = inspect_inputs(path, TICKET, {})
    assert inputs.columns == ("text", "n") and inputs.rows == 3
    assert list(read_rows(inputs, TICKET, {})) == [
        (0, {"text": "two\r\nlines", "n": 5}),
        (1, {"text": "only text"}),
        (2, {"text": "café", "n": 6}),
    ]


def test_csv_errors_name_the_line_the_record_starts_on(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text('text\nok\n"multi\nline"x\n')
    assert error_of(path).startswith(f"{path}:3: not CSV")


def test_an_unclosed_quote_is_bounded_by_the_record_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rows_module, "MAX_RECORD_BYTES", 200)
    path = tmp_path / "in.csv"
    path.write_text('text\nok\n"never closed\n' + "more text\n" * 50)
    message = error_of(path)
    assert message.startswith(f"{path}:3: CSV record longer than") and "unclosed quote" in message


def test_csv_needs_a_header_and_a_used_column_once(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert "a header row naming the columns is required" in error_of(empty)
    twice = tmp_path / "twice.csv"
    twice.write_text("text,junk,junk,text\na,b,c,d\n")
    assert error_of(twice) == f"{twice}:1: column 'text' appears twice in the header"


# --------------------------------------------------------------------------- Parquet


def test_parquet_round_trip_keeps_types_and_reads_only_needed_columns(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    import datetime

    table = pa.table(
        {
            "body": ["a", None, "c"],
            "n": pa.array([1.0, 2.0, None], pa.float64()),
            "flag": [True, False, None],
            "when": [datetime.date(2024, 1, 2)] * 3,
            "unused": [[1], [2], [3]],
        }
    )
    path = tmp_path / "in.parquet"
    pq.write_table(table, path, row_group_size=2)
    workflow = spec(text=("string", REQUIRED), n=("integer", 1), flag=("boolean", False), when=("string", ""))
    inputs = inspect_inputs(path, workflow, {"text": "body"})
    assert inputs.format == "parquet" and inputs.rows == 3
    assert inputs.columns == ("body", "n", "flag", "when", "unused")
    assert inputs.fingerprint == hashlib.sha256(path.read_bytes()).hexdigest()
    assert list(read_rows(inputs, workflow, {"text": "body"})) == [
        (0, {"text": "a", "n": 1, "flag": True, "when": "2024-01-02"}),
        (1, {"n": 2, "flag": False, "when": "2024-01-02"}),
        (2, {"text": "c", "when": "2024-01-02"}),
    ]


def test_parquet_with_no_column_the_workflow_reads_still_counts_rows(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"other": [1, 2]}), path)
    workflow = spec(n=("integer", 1))
    assert rows_of(path, workflow) == [(0, {}), (1, {})]


def test_a_file_that_is_not_parquet_is_a_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    path = tmp_path / "in.parquet"
    path.write_text("text\nhello\n")
    assert error_of(path).startswith(f"{path}: not a Parquet file")


def test_without_pyarrow_parquet_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    path = tmp_path / "in.parquet"
    path.write_bytes(b"PAR1")
    assert "pip install 'modelyard[parquet]'" in error_of(path)


# --------------------------------------------------------------------------- streaming


def _write_big(path: Path, count: int) -> None:
    with path.open("w") as file:
        for i in range(count):
            file.write(json.dumps({"text": f"ticket {i} " + "x" * 200, "n": i}) + "\n")


def _rss() -> int:
    """The process's resident memory now (bytes), from /proc (the peak counter would hide a later rise)."""
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * resource.getpagesize()


def test_200k_rows_stream_with_flat_memory(tmp_path: Path) -> None:
    """A file of ~45 MB: reading it must not hold it (resident memory grows by far less than the file)."""
    path = tmp_path / "big.jsonl"
    _write_big(path, 200_000)
    size = path.stat().st_size
    before = _rss()
    inputs = inspect_inputs(path, TICKET, {})
    assert inputs.rows == 200_000
    peak = _rss()
    last, final = -1, {}
    for index, row in read_rows(inputs, TICKET, {}):
        assert index == last + 1
        last, final = index, row
        if index % 10_000 == 0:
            peak = max(peak, _rss())
    assert last == 199_999 and final == {"text": f"ticket 199999 {'x' * 200}", "n": 199_999}
    grown = peak - before
    assert grown < size / 4, f"resident memory grew {grown / 1e6:.1f} MB reading a {size / 1e6:.1f} MB file"


def test_read_rows_is_lazy(tmp_path: Path) -> None:
    """The driver feeds rows as the engine has room: the first row comes before the file is read through."""
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\nnot json\n')
    inputs = InputsFile(path, "jsonl", "", 3, ("text",))  # as the driver builds it from the header
    stream = read_rows(inputs, TICKET, {})
    assert next(stream) == (0, {"text": "a"})
    assert next(stream) == (1, {"text": "b"})
    with pytest.raises(RowsError, match=":3: not JSON"):
        next(stream)


def test_a_csv_field_larger_than_the_csv_module_default_is_read(tmp_path: Path) -> None:
    """The csv module refuses fields over 128 KiB by default; a long document in one cell is a normal row."""
    path = tmp_path / "in.csv"
    path.write_text('text\n"' + "y" * 1_000_000 + '"\nshort\n')
    assert [len(row["text"]) for _, row in rows_of(path)] == [1_000_000, 5]
