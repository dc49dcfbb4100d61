"""Checks the router commands (`router train|crossval|add-model|retrain`) make on their options before any
data is read or any model loads: a nonsense option is one `error:` line and exit 2, never a traceback from
deep inside training, and never minutes of training thrown away because the output folder is missing.

One copy of each rule, shared by `cli.router` and `cli.router_models`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import typer

#: Prompt tokens MiniLM can read: two are its [CLS] and [SEP] markers, 512 is its position table
#: (`routing.embeddings.MiniLM` refuses anything else, but only once the data is loaded).
MIN_TOKENS, MAX_TOKENS = 3, 512
#: Cross-fitting needs two folds at least (one to fit on, one to score).
MIN_FOLDS = 2


def fail(message: str) -> typer.Exit:
    """One line on stderr, exit 2 (plain echo: a rich console would wrap a long path over lines)."""
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    return typer.Exit(code=2)


def check_training(*, folds: int, target: float, max_tokens: int | None = None) -> None:
    """Raise `fail` for a fold count, calibration target or token count training cannot honour."""
    if max_tokens is not None and not MIN_TOKENS <= max_tokens <= MAX_TOKENS:
        raise fail(f"--max-tokens must be {MIN_TOKENS} to {MAX_TOKENS} (MiniLM's range), not {max_tokens}")
    if folds < MIN_FOLDS:
        raise fail(f"--folds must be {MIN_FOLDS} or more (one part to fit on, one to score), not {folds}")
    check_target(target)


def check_target(target: float) -> None:
    """Raise `fail` unless `target` is a share of the best model's quality: in (0, 1], not NaN."""
    if not (math.isfinite(target) and 0.0 < target <= 1.0):
        raise fail(f"--target is a share of the best model's quality, in (0, 1], not {target}")


def check_folds_fit(folds: int, prompts: int) -> None:
    """Raise `fail` when there are fewer prompts than folds (some folds would be empty)."""
    if prompts < folds:
        raise fail(f"{prompts} prompts cannot be split into {folds} folds: pass --folds {max(prompts, 2)} or less")


def check_out(path: Path) -> None:
    """Raise `fail` unless the artifact can be written at `path` (an .npz file, else a folder made for it):
    checked before training, so a typo in --out costs a second, not the training run."""
    if path.suffix != ".npz":  # a folder: created with its parents by QualityModel.save
        existing = next((p for p in (path, *path.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            raise fail(f"--out {path}: {existing} is a file, not a folder")
        if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
            raise fail(f"--out {path}: cannot write in {existing}")
        return
    if path.is_dir():
        raise fail(f"--out {path} is a folder; name the .npz file to write")
    parent = path.parent
    if not parent.is_dir():
        raise fail(f"--out {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise fail(f"--out {path}: cannot write there")


def check_report_out(path: Path | None, option: str) -> None:
    """Raise `fail` unless a report file (`--json`, `--plot`) can be written at `path`: checked before the
    evaluation runs, so its figures are not lost to a typo at the end."""
    if path is None:
        return
    if path.is_dir():
        raise fail(f"{option} {path} is a folder; name the file to write")
    if not path.parent.is_dir():
        raise fail(f"{option} {path}: the folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise fail(f"{option} {path}: cannot write there")
