"""The row loader's checks: every defect of a labelled-data line is one ValueError that starts with
`file:line` (what `router train|eval|add-model` print as their one error line), never a TypeError,
AttributeError or OverflowError from deep inside."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.lab.datasets import read_rows

GOOD = '{"prompt": "p", "model": "m", "score": 1}'


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("[1, 2]", "a row must be a JSON object, not list [1, 2]"),
        ('"prompt"', 'a row must be a JSON object, not str "prompt"'),
        ("null", "a row must be a JSON object, not NoneType null"),
        ('{"prompt": "p", "model": "m", "score": [1]}', "score must be a number, not list [1]"),
        ('{"prompt": "p", "model": "m", "score": {"x": 1}}', "score must be a number, not dict"),
        ('{"prompt": "p", "model": "m", "score": "high"}', 'score "high" is not a number'),
        ('{"prompt": "p", "model": "m", "score": 1, "cost": [0.1]}', "cost must be a number"),
        ('{"prompt": "p", "model": "m", "score": 1, "input_tokens": 1e999}', "input_tokens inf is not a finite"),
        ('{"prompt": "p", "model": "m", "score": 1, "output_tokens": NaN}', "output_tokens nan is not a finite"),
        ("{{{", "not JSON (Expecting property name"),
    ],
)
def test_a_bad_line_is_a_value_error_naming_its_file_and_line(tmp_path: Path, line: str, says: str) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(f"{GOOD}\n\n{line}\n", encoding="utf-8")  # the blank line still counts: line 3
    with pytest.raises(ValueError) as info:
        list(read_rows(path))
    assert type(info.value) is ValueError  # not a JSONDecodeError or other subclass with its own format
    assert str(info.value).startswith(f"{path}:3: {says}"), str(info.value)


def test_numbers_as_json_booleans_and_csv_strings_still_load(tmp_path: Path) -> None:
    """The control: what the checks must keep accepting (true/false correctness labels, CSV's strings)."""
    (tmp_path / "rows.jsonl").write_text(
        '{"prompt": "p", "model": "m", "score": true, "cost": 0, "input_tokens": 12.0}\n'
        '{"prompt": "q", "model": "m", "score": false}\n',
        encoding="utf-8",
    )
    rows = list(read_rows(tmp_path / "rows.jsonl"))
    assert [r["score"] for r in rows] == [1.0, 0.0]
    assert rows[0]["input_tokens"] == 12 and rows[0]["cost"] == 0.0
    (tmp_path / "rows.csv").write_text("prompt,model,score,cost\np,m,0.5,1e-3\n", encoding="utf-8")
    assert list(read_rows(tmp_path / "rows.csv")) == [{"prompt": "p", "model": "m", "score": 0.5, "cost": 1e-3}]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[1]", "prices must be {model:"),
        ('{"a": [1]}', "prices must be {model:"),
        ('{"a": {"input": [1]}}', "a: input must be a number"),
        ('{"a": {"input": -1}}', "finite and not negative"),
        ('{"a": {"output": 1e999}}', "finite and not negative"),
        ("{bad", "not JSON"),
    ],
)
def test_a_bad_price_table_is_one_value_error_naming_the_file(tmp_path: Path, text: str, says: str) -> None:
    from modelyard.lab.datasets import load_prices

    path = tmp_path / "prices.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError) as info:
        load_prices(path)
    assert type(info.value) is ValueError and str(info.value).startswith(str(path)) and says in str(info.value)
    path.write_text('{"a": {"input": 0.5, "output": "2"}}', encoding="utf-8")  # the control
    assert load_prices(path) == {"a": {"input": 0.5, "output": 2.0}}
