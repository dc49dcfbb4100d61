"""`modelyard batch` attacked as a hostile user and as a dying process: the real CLI in subprocesses.

Every test asserts the SAFE behaviour. Where the product fails it today, the test is marked
`xfail(strict=True)` with the defect in one line, so the fix is proven by removing the mark. Rows run on the
scripted backend (no network), whose `MODELYARD_SCRIPTED_LOG` records every model call across processes: that
is how "paid twice" is counted.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
CLI = [sys.executable, "-m", "modelyard.cli.main", "batch"]
BATCHES = [sys.executable, "-m", "modelyard.cli.main", "batches"]
WORKFLOW = """
schema: modelyard.workflow/v1
name: one
inputs: {ticket: string}
steps:
  classify: {model: fast, prompt: "Classify: {{ inputs.ticket }}", max_tokens: 16}
outputs: {label: "{{ classify }}"}
"""
NUMBER_WORKFLOW = """
schema: modelyard.workflow/v1
name: num
inputs: {n: number}
steps:
  say: {model: fast, prompt: "Number {{ inputs.n }}", max_tokens: 16}
outputs: {label: "{{ say }}", n: "{{ inputs.n }}"}
"""
PASSWORD = "S3cretPw-attack"


class Batch:
    """One scratch directory: a workflow, a store, a call log, and the CLI run against them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.workflow = root / "wf.yaml"
        self.workflow.write_text(textwrap.dedent(WORKFLOW), encoding="utf-8")
        self.store = root / "batch.db"
        self.log = root / "calls.jsonl"

    def env(self, delay_s: float = 0.0) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("MODELYARD_", "RAY_"))}
        return {
            **base,
            "COLUMNS": "160",
            "MODELYARD_WORKFLOW_BACKEND": "scripted",
            "MODELYARD_SCRIPTED_LOG": str(self.log),
            "MODELYARD_SCRIPTED_DELAY_S": str(delay_s),
        }

    def args(self, *extra: str, store: str | None = None) -> list[str]:
        return [*CLI, *extra, "--store", store or str(self.store), "--no-progress"]

    def run(self, *extra: str, store: str | None = None, delay_s: float = 0.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.args(*extra, store=store),
            cwd=self.root,
            env=self.env(delay_s),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def start(self, *extra: str, delay_s: float = 0.0) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.args(*extra),
            cwd=self.root,
            env=self.env(delay_s),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def new(
        self, inputs: Path, out: str = "out.jsonl", *extra: str, store: str | None = None, delay_s: float = 0.0
    ) -> subprocess.CompletedProcess[str]:
        return self.run(str(self.workflow), "--inputs", str(inputs), "--out", out, *extra, store=store, delay_s=delay_s)

    def rows(self, n: int, name: str = "rows.jsonl") -> Path:
        path = self.root / name
        path.write_text("".join(json.dumps({"ticket": f"ticket {i}"}) + "\n" for i in range(n)), encoding="utf-8")
        return path

    def calls(self) -> int:
        """Model calls started, by every process that ran against this log."""
        if not self.log.exists():
            return 0
        lines = self.log.read_text(encoding="utf-8").splitlines()
        return sum(1 for line in lines if json.loads(line)["event"] == "started")

    def done(self, batch_id: str) -> int:
        if not self.store.exists():
            return 0
        with sqlite3.connect(self.store, timeout=5) as db:
            try:
                return int(db.execute("SELECT count(*) FROM batch_rows WHERE batch_id = ?", (batch_id,)).fetchone()[0])
            except sqlite3.OperationalError:
                return 0

    def state(self, batch_id: str) -> str | None:
        if not self.store.exists():
            return None
        with sqlite3.connect(self.store, timeout=5) as db:
            try:
                row = db.execute("SELECT * FROM batch_state WHERE batch_id = ?", (batch_id,)).fetchone()
            except sqlite3.OperationalError:
                return None
        return None if row is None else str(row[1])


def out_rows(path: Path) -> list[int]:
    """The row indexes in a results file; every line must be strict JSON (no NaN/Infinity)."""

    def refuse(token: str) -> None:
        raise ValueError(f"not JSON: {token}")

    return [json.loads(line, parse_constant=refuse)["row"] for line in path.read_text("utf-8").splitlines()]


def clean_exit_2(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit 2, no traceback, and every needle in the message."""
    text = done.stdout + done.stderr
    assert "Traceback" not in text, text
    assert done.returncode == 2, text
    for needle in needles:
        assert needle in text, (needle, text)


def wait_until(check: Callable[[], bool], process: subprocess.Popen[str], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def batch(tmp_path: Path) -> Batch:
    return Batch(tmp_path)


# --------------------------------------------------------------------------- hostile inputs files

BAD_INPUTS = {
    "bad-json": (".jsonl", b'{"ticket": "a"}\n{bad json\n', ":2:"),
    "non-object": (".jsonl", b'{"ticket": "a"}\n[1, 2]\n', ":2:"),
    "scalar-line": (".jsonl", b'{"ticket": "a"}\n"just a string"\n', ":2:"),
    "nul-in-json-string": (".jsonl", b'{"ticket": "a\x00b"}\n', ":1:"),
    "nul-after-object": (".jsonl", b'{"ticket": "a"}\x00\n', ":1:"),
    "invalid-utf8": (".jsonl", b'{"ticket": "ok"}\n{"ticket": "\xff\xfe"}\n', ":2:"),
    "nan": (".jsonl", b'{"ticket": "a"}\n{"ticket": NaN}\n', ":2:"),
    "infinity-literal": (".jsonl", b'{"ticket": Infinity}\n', ":1:"),
    "int-5000-digits": (".jsonl", b'{"ticket": 1' + b"0" * 5000 + b"}\n", ":1:"),
    "deeply-nested": (".jsonl", b'{"ticket": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", ":1:"),
    "csv-duplicate-header": (".csv", b"ticket,ticket\na,b\n", ":1:"),
    "csv-invalid-utf8": (".csv", b"ticket\nok\n\xff\n", ":3:"),
    "csv-unterminated-quote": (".csv", b'ticket\n"never closed\n', ":2:"),
    "csv-empty": (".csv", b"", "header"),
    "jsonl-empty": (".jsonl", b"", "rows.jsonl"),
    "parquet-garbage": (".parquet", b"PAR1 not really", "Parquet"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_a_malformed_inputs_file_is_exit_2_with_file_and_line_never_a_traceback(batch: Batch, name: str) -> None:
    suffix, data, where = BAD_INPUTS[name]
    inputs = batch.root / f"rows{suffix}"
    inputs.write_bytes(data)
    clean_exit_2(batch.new(inputs), where)
    assert batch.calls() == 0  # nothing paid for before the whole file was checked
    assert not (batch.root / "out.jsonl").exists()


def test_a_20_mib_line_is_refused_by_line_number_without_reading_it_whole(batch: Batch) -> None:
    inputs = batch.root / "rows.jsonl"
    with inputs.open("wb") as file:
        file.write(b'{"ticket": "fine"}\n{"ticket": "')
        file.write(b"x" * (20 * 1024 * 1024))
        file.write(b'"}\n')
    clean_exit_2(batch.new(inputs), "rows.jsonl:2:", "16 MiB")
    assert batch.calls() == 0


def test_a_csv_with_a_header_only_is_an_empty_batch_not_a_crash(batch: Batch) -> None:
    inputs = batch.root / "rows.csv"
    inputs.write_bytes(b"ticket\n")
    done = batch.new(inputs)
    assert "Traceback" not in done.stderr and done.returncode in (0, 2), done.stderr
    if done.returncode == 0:
        assert out_rows(batch.root / "out.jsonl") == []
    assert batch.calls() == 0


def test_a_wrongly_typed_cell_fails_its_row_as_invalid_and_pays_nothing(batch: Batch) -> None:
    inputs = batch.root / "rows.jsonl"
    inputs.write_text('{"ticket": "fine"}\n{"ticket": 5}\n{"ticket": 1e999}\n{"ticket": "also fine"}\n')
    done = batch.new(inputs)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    lines = [json.loads(line) for line in (batch.root / "out.jsonl").read_text().splitlines()]
    assert [line["status"] for line in lines] == ["succeeded", "invalid", "invalid", "succeeded"]
    assert batch.calls() == 2


def test_an_overflowing_number_never_reaches_the_output_as_non_json(batch: Batch) -> None:
    batch.workflow.write_text(textwrap.dedent(NUMBER_WORKFLOW), encoding="utf-8")
    inputs = batch.root / "rows.jsonl"
    inputs.write_text('{"n": 1e999}\n{"n": -1e999}\n{"n": 1e308}\n')
    done = batch.new(inputs)
    assert "Traceback" not in done.stderr
    if done.returncode == 2:
        assert "rows.jsonl:1:" in done.stderr
        return
    assert out_rows(batch.root / "out.jsonl") == [0, 1, 2]  # strict JSON: no Infinity token
    statuses = [json.loads(line)["status"] for line in (batch.root / "out.jsonl").read_text().splitlines()]
    assert statuses[:2] == ["invalid", "invalid"]


@pytest.mark.parametrize(
    ("pairs", "needle"),
    [
        (["ticket=nope"], "no column 'nope'"),
        (["nope=ticket"], "no input 'nope'"),
        (["ticket"], "INPUT=COLUMN"),
        (["=ticket"], "INPUT=COLUMN"),
        (["ticket="], "INPUT=COLUMN"),
        (["ticket=a", "ticket=b"], "mapped twice"),
    ],
)
def test_a_bad_map_is_exit_2_naming_it(batch: Batch, pairs: list[str], needle: str) -> None:
    args = [arg for pair in pairs for arg in ("--map", pair)]
    clean_exit_2(batch.new(batch.rows(3), "out.jsonl", *args), needle)
    assert batch.calls() == 0


# --------------------------------------------------------------------------- options at the edge


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "0", "abc"])
def test_a_budget_that_is_not_a_positive_finite_number_is_exit_2(batch: Batch, value: str) -> None:
    clean_exit_2(batch.new(batch.rows(3), "out.jsonl", f"--max-cost-usd={value}"), "--max-cost-usd")
    assert batch.calls() == 0


def test_a_huge_budget_is_just_no_limit(batch: Batch) -> None:
    done = batch.new(batch.rows(5), "out.jsonl", "--max-cost-usd=1e308")
    assert done.returncode == 0, done.stderr
    assert out_rows(batch.root / "out.jsonl") == list(range(5))


@pytest.mark.parametrize("value", ["0", "-1", str(10**9), "99999999999999999999999", "abc"])
def test_a_concurrency_out_of_range_is_exit_2(batch: Batch, value: str) -> None:
    clean_exit_2(batch.new(batch.rows(3), "out.jsonl", f"--concurrency={value}"), "--concurrency")
    assert batch.calls() == 0


def test_an_unknown_engine_is_exit_2(batch: Batch) -> None:
    clean_exit_2(batch.new(batch.rows(3), "out.jsonl", "--engine", "spark"), "--engine")


@pytest.mark.parametrize(
    "batch_id",
    ["../../etc/passwd", "a/b", "line\nbreak", "bell\x07", "x" * 100_000],
    ids=["dotdot", "slash", "newline", "control", "100k-chars"],
)
def test_a_batch_id_with_path_or_control_characters_or_unbounded_length_is_exit_2(batch: Batch, batch_id: str) -> None:
    clean_exit_2(batch.new(batch.rows(2), "out.jsonl", "--batch-id", batch_id), "--batch-id")


def test_a_batch_id_with_sql_in_it_is_stored_verbatim_and_the_store_survives(batch: Batch) -> None:
    hostile = "x'); DROP TABLE batch_rows; --"
    done = batch.new(batch.rows(2), "out.jsonl", "--batch-id", hostile)
    assert "Traceback" not in done.stderr
    if done.returncode == 2:  # refused as a bad id: fine too
        return
    assert done.returncode == 0, done.stderr
    assert batch.done(hostile) == 2  # batch_rows still exists, the id round-tripped
    again = batch.new(batch.rows(2), "out2.jsonl", "--batch-id", hostile)
    clean_exit_2(again, "already exists")
    assert batch.calls() == 2


def test_a_resume_of_an_unknown_batch_is_exit_2(batch: Batch) -> None:
    clean_exit_2(batch.run("--resume", "no-such-batch"), "no-such-batch")
    clean_exit_2(batch.run("--resume", "x' OR '1'='1"), "no batch")


def test_a_resume_after_the_inputs_changed_is_refused(batch: Batch) -> None:
    rows = batch.rows(4)
    assert batch.new(rows, "out.jsonl", "--batch-id", "b1", "--max-cost-usd", "0.00001").returncode == 1
    rows.write_text(rows.read_text() + json.dumps({"ticket": "smuggled"}) + "\n")
    clean_exit_2(batch.run("--resume", "b1"), "changed")
    (batch.root / "other.jsonl").write_text("")
    clean_exit_2(batch.run("--resume", "b1", "--inputs", str(batch.root / "other.jsonl")))


def test_out_equal_to_inputs_is_refused_and_the_inputs_survive(batch: Batch) -> None:
    rows = batch.rows(5)
    before = rows.read_bytes()
    done = batch.new(rows, str(rows))
    assert rows.read_bytes() == before, "the inputs file was clobbered"
    clean_exit_2(done, "--out")


def test_out_as_a_symlink_to_the_inputs_never_clobbers_them(batch: Batch) -> None:
    rows = batch.rows(5)
    before = rows.read_bytes()
    (batch.root / "link.jsonl").symlink_to(rows)
    done = batch.new(rows, "link.jsonl")
    assert "Traceback" not in done.stderr
    assert rows.read_bytes() == before


@pytest.mark.parametrize(
    ("out", "needle"),
    [("missing/dir/out.jsonl", "does not exist"), ("adir.jsonl", "directory"), ("out.csv", ".jsonl")],
)
def test_an_unwritable_out_is_exit_2_before_anything_is_paid(batch: Batch, out: str, needle: str) -> None:
    (batch.root / "adir.jsonl").mkdir()
    clean_exit_2(batch.new(batch.rows(3), out), needle)
    assert batch.calls() == 0


# --------------------------------------------------------------------------- stores


@pytest.mark.parametrize("kind", ["directory", "not-sqlite"])
def test_an_unusable_sqlite_store_is_exit_2_without_a_traceback(batch: Batch, kind: str) -> None:
    store = batch.root / "store.db"
    if kind == "directory":
        store.mkdir()
    else:
        store.write_bytes(b"this is not a database, it is a text file\n" * 100)
    clean_exit_2(batch.new(batch.rows(3), "out.jsonl", store=str(store)), "store.db")
    assert batch.calls() == 0


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/test",
        f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/no_such_db_attack",
        f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/test?bogus=1",
    ],
    ids=["refused", "no-database", "bad-parameter"],
)
def test_a_postgresql_store_that_fails_is_exit_2_without_traceback_or_password(batch: Batch, dsn: str) -> None:
    done = batch.new(batch.rows(3), "out.jsonl", store=dsn)
    assert PASSWORD not in done.stdout + done.stderr
    clean_exit_2(done)


def test_a_password_in_the_dsn_query_is_never_printed(batch: Batch) -> None:
    done = batch.new(batch.rows(3), "out.jsonl", store=f"postgresql://postgres@127.0.0.1:1/test?password={PASSWORD}")
    assert PASSWORD not in done.stdout + done.stderr
    assert done.returncode == 2


def test_a_store_locked_by_another_process_for_a_moment_is_waited_for(batch: Batch) -> None:
    rows = batch.rows(10)
    assert batch.new(rows, "warm.jsonl", "--batch-id", "warm").returncode == 0  # the schema exists
    holder = sqlite3.connect(batch.store, isolation_level=None, timeout=5)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        process = batch.start(str(batch.workflow), "--inputs", str(rows), "--out", "out.jsonl", "--batch-id", "b2")
        time.sleep(1.5)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert out_rows(batch.root / "out.jsonl") == list(range(10))


# --------------------------------------------------------------------------- money


def test_a_resume_while_the_first_driver_is_alive_is_refused(batch: Batch) -> None:
    rows = batch.rows(200)
    first = batch.start(
        str(batch.workflow), "--inputs", str(rows), "--out", "out.jsonl", "--batch-id", "live", "--concurrency", "2",
        delay_s=0.05,
    )  # fmt: skip
    try:
        wait_until(lambda: batch.done("live") >= 2, first)
        second = batch.run("--resume", "live")
        clean_exit_2(second, "alive", "--force")
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)


def test_two_resumes_started_together_never_pay_a_row_twice(batch: Batch) -> None:
    rows = batch.root / "rows.jsonl"
    pad = "p" * 400_000  # a wide ignored column: the inputs check takes a while, as on a real big file
    rows.write_text("".join(json.dumps({"ticket": f"t{i}", "pad": pad}) + "\n" for i in range(200)))
    stopped = batch.new(rows, "out.jsonl", "--batch-id", "race", "--max-cost-usd", "0.0005")
    assert stopped.returncode == 1, stopped.stderr  # stopped by the budget with rows left
    before = batch.calls()
    left = 200 - batch.done("race")
    assert left > 100
    both = [batch.start("--resume", "race", "--max-cost-usd", "100", delay_s=0.01) for _ in range(2)]
    codes = [p.wait(60) for p in both]
    for process in both:
        process.communicate()
    assert sorted(out_rows(batch.root / "out.jsonl")) == list(range(200))
    assert batch.calls() - before == left, (codes, batch.calls() - before, left)  # each row paid once


def test_a_budget_holds_when_rows_cost_far_more_than_their_estimate(batch: Batch) -> None:
    """The scripted model answers ~100 tokens where the planner estimates max_tokens=16: real costs ~5x the
    estimate. The run must still stop near the limit: at most one row's real cost over it."""
    rows = batch.rows(300)
    limit = 0.002
    done = batch.new(rows, "out.jsonl", "--batch-id", "cheap", "--max-cost-usd", str(limit), "--concurrency", "16")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    costs = [json.loads(line)["cost_usd"] for line in (batch.root / "out.jsonl").read_text().splitlines()]
    assert costs and 0 < len(costs) < 300
    assert sum(costs) <= limit + max(costs), (sum(costs), limit, max(costs), len(costs))


def test_retry_failed_twice_in_a_row_pays_nothing_more_for_succeeded_rows(batch: Batch) -> None:
    rows = batch.rows(30)
    assert batch.new(rows, "out.jsonl", "--batch-id", "rt").returncode == 0
    assert batch.calls() == 30
    for _ in range(2):
        again = batch.run("--resume", "rt", "--retry-failed")
        assert again.returncode == 0, again.stderr
    assert batch.calls() == 30
    assert out_rows(batch.root / "out.jsonl") == list(range(30))


# --------------------------------------------------------------------------- crashes


def test_sigkill_mid_run_then_resume_with_another_concurrency_pays_at_most_the_calls_in_flight(batch: Batch) -> None:
    rows = batch.rows(300)
    first = batch.start(
        str(batch.workflow), "--inputs", str(rows), "--out", "out.jsonl", "--batch-id", "k", "--concurrency", "6",
        delay_s=0.01,
    )  # fmt: skip
    wait_until(lambda: batch.done("k") >= 100, first)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=10)
    resumed = batch.run("--resume", "k", "--concurrency", "32")
    assert resumed.returncode == 0, resumed.stderr
    assert out_rows(batch.root / "out.jsonl") == list(range(300))
    assert 300 <= batch.calls() <= 300 + 6


def test_sigkill_while_the_output_is_rewritten_leaves_whole_lines_and_resume_fixes_it(batch: Batch) -> None:
    """Killed when a rewrite's temp file appears (the open's rebuild or the final one; the deterministic kill in
    the middle of the final rewrite, and the temp file it leaves, are in tests/unit/batch/test_issue18_attacks.py)."""
    rows = batch.rows(4000)
    first = batch.start(str(batch.workflow), "--inputs", str(rows), "--out", "out.jsonl", "--batch-id", "w")
    out = batch.root / "out.jsonl"
    wait_until(lambda: any(batch.root.glob(".out.jsonl.*.tmp")) or batch.state("w") == "finished", first, 60)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=10)
    if out.exists():
        lines = out_rows(out)  # whole lines only: never torn
        assert len(lines) == len(set(lines))
    resumed = batch.run("--resume", "w")
    assert resumed.returncode == 0, resumed.stderr
    assert out_rows(out) == list(range(4000))
