"""The router commands' option checks (cli/router_checks.py): each refusal is exit 2 with one `error:` line
that names the option, and each bound is tight (the value just inside it passes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import typer

from modelyard.cli.router_checks import (
    MAX_TOKENS,
    MIN_TOKENS,
    check_folds_fit,
    check_out,
    check_report_out,
    check_training,
)


def refused(call: object, capsys: pytest.CaptureFixture[str], says: str) -> None:
    assert callable(call)
    with pytest.raises(typer.Exit) as info:
        call()
    assert info.value.exit_code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and says in err, err


@pytest.mark.parametrize("tokens", [-1, 0, MIN_TOKENS - 1, MAX_TOKENS + 1, 10**9])
def test_token_counts_outside_minilm_range_are_refused(tokens: int, capsys: pytest.CaptureFixture[str]) -> None:
    refused(lambda: check_training(folds=5, target=0.9, max_tokens=tokens), capsys, "--max-tokens")


@pytest.mark.parametrize("folds", [-3, 0, 1])
def test_fewer_than_two_folds_are_refused(folds: int, capsys: pytest.CaptureFixture[str]) -> None:
    refused(lambda: check_training(folds=folds, target=0.9), capsys, "--folds")


@pytest.mark.parametrize("target", [0.0, -1.0, 1.0000001, 7.0, float("nan"), float("inf"), float("-inf")])
def test_targets_outside_zero_one_are_refused(target: float, capsys: pytest.CaptureFixture[str]) -> None:
    refused(lambda: check_training(folds=5, target=target), capsys, "--target")


def test_the_bounds_themselves_pass() -> None:
    for tokens in (MIN_TOKENS, 32, MAX_TOKENS, None):
        check_training(folds=2, target=1.0, max_tokens=tokens)
    check_training(folds=2, target=1e-9)
    check_folds_fit(5, 5)


def test_more_folds_than_prompts_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    refused(lambda: check_folds_fit(5, 4), capsys, "4 prompts cannot be split into 5 folds")


def test_an_npz_in_a_missing_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refused(lambda: check_out(tmp_path / "no" / "such" / "r.npz"), capsys, "does not exist")
    (tmp_path / "old.npz").mkdir()
    refused(lambda: check_out(tmp_path / "old.npz"), capsys, "is a folder")
    check_out(tmp_path / "r.npz")  # the control: an existing folder
    check_out(tmp_path / "new" / "deeper")  # a folder artifact: save() makes it with its parents


def test_a_folder_artifact_under_a_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f").write_text("x")
    refused(lambda: check_out(tmp_path / "f" / "sub"), capsys, "is a file, not a folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_a_folder_without_write_permission_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        refused(lambda: check_out(locked / "r.npz"), capsys, "cannot write")
        refused(lambda: check_out(locked / "sub"), capsys, "cannot write")
    finally:
        locked.chmod(0o700)


def test_a_report_file_must_be_writable_before_the_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refused(lambda: check_report_out(tmp_path / "no" / "r.json", "--json"), capsys, "--json")
    refused(lambda: check_report_out(tmp_path, "--plot"), capsys, "is a folder")
    check_report_out(tmp_path / "r.json", "--json")  # the control
    check_report_out(None, "--json")
