"""Router files that are not usable routers: the loader names the file and what is wrong in one
`RouterFileError` (a ValueError), never an EOFError, BadZipFile, KeyError or a shape error on the first
request; a file that cannot be read at all stays an OSError. Also the retrain command's DSN masking."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelyard.routing.learned import DEFAULT_QUALITY_MODEL, TEXT_FEATURES, QualityModel, RouterFileError


def _arrays() -> dict[str, Any]:
    with np.load(DEFAULT_QUALITY_MODEL, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _meta(arrays: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads(bytes(arrays["meta"]).decode())
    return meta


def _with_meta(arrays: dict[str, Any], **changes: Any) -> dict[str, Any]:
    meta = _meta(arrays) | changes
    return arrays | {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}


def _drop(arrays: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in arrays.items() if k != key}


#: name -> (a change to the shipped router's arrays, a phrase the message must hold)
BROKEN: dict[str, tuple[Callable[[dict[str, Any]], dict[str, Any]], str]] = {
    "no meta": (lambda a: _drop(a, "meta"), "no `meta`"),
    "meta is a list": (lambda a: a | {"meta": np.frombuffer(b"[1, 2]", dtype=np.uint8)}, "format"),
    "meta not utf-8": (lambda a: a | {"meta": np.frombuffer(b"\xff\xfe{", dtype=np.uint8)}, "UnicodeDecodeError"),
    "other features": (lambda a: _with_meta(a, text_features=["log_chars"]), "other text features"),
    "no feature_std": (lambda a: _drop(a, "feature_std"), "feature_std"),
    "short feature_mean": (lambda a: a | {"feature_mean": a["feature_mean"][:5]}, "text feature scaling"),
    "no heads": (lambda a: _with_meta(a, heads=[]), "no predictor head"),
    "unknown head": (lambda a: _with_meta(a, heads=[{"kind": "forest", "weight": 1.0}]), "forest"),
    "head without weights": (lambda a: _drop(a, "h0_weights"), "weights"),
    "one model too many": (lambda a: _with_meta(a, models=[*_meta(a)["models"], "extra"]), "one probability"),
    "a model named twice": (
        lambda a: _with_meta(a, models=[_meta(a)["models"][0]] * len(_meta(a)["models"])),
        "repeats",
    ),
    "bias of another length": (lambda a: a | {"h0_bias": a["h0_bias"][:3]}, "do not fit"),
    "weights with one axis": (lambda a: a | {"h0_weights": a["h0_weights"][:, 0]}, "embedding's length"),
    "max_tokens not a number": (lambda a: _with_meta(a, max_tokens="many"), "ValueError"),
    "models not a list": (lambda a: _with_meta(a, models=None), "TypeError"),
}


def test_the_shipped_router_loads_and_saved_arrays_round_trip(tmp_path: Path) -> None:
    """The control: the unchanged arrays written the same way load, so each broken case fails for its change."""
    np.savez(tmp_path / "same.npz", **_arrays())
    model = QualityModel.load(tmp_path / "same.npz")
    assert model.models == QualityModel.load(DEFAULT_QUALITY_MODEL).models
    assert len(TEXT_FEATURES) == model.feature_mean.shape[0]


@pytest.mark.parametrize("name", list(BROKEN))
def test_a_broken_router_is_one_router_file_error_naming_the_file(tmp_path: Path, name: str) -> None:
    change, phrase = BROKEN[name]
    path = tmp_path / "router.npz"
    np.savez(path, **change(_arrays()))
    with pytest.raises(RouterFileError) as info:
        QualityModel.load(tmp_path)  # a folder holding router.npz: the message names the file itself
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert phrase in message, message
    assert isinstance(info.value, ValueError)  # callers that catch ValueError (config checks) keep working


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        (b"", "the file is empty"),
        (b"\x93NUMPY not a router", "not an npz archive"),  # np.load would suggest allow_pickle: never
        (b"PK\x03\x04 then nothing", "not a whole npz archive"),
    ],
)
def test_bytes_that_are_not_an_npz_are_a_router_file_error(tmp_path: Path, content: bytes, phrase: str) -> None:
    (tmp_path / "r.npz").write_bytes(content)
    with pytest.raises(RouterFileError, match=phrase) as info:
        QualityModel.load(tmp_path / "r.npz")
    assert "allow_pickle" not in str(info.value)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.99])
def test_a_truncated_router_is_a_router_file_error(tmp_path: Path, keep: float) -> None:
    whole = DEFAULT_QUALITY_MODEL.read_bytes()
    (tmp_path / "r.npz").write_bytes(whole[: int(len(whole) * keep)])
    with pytest.raises(RouterFileError, match="is not a modelyard router"):
        QualityModel.load(tmp_path / "r.npz")


def test_a_file_that_cannot_be_read_stays_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        QualityModel.load(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError):
        QualityModel.load(tmp_path)  # a folder without router.npz


# --------------------------------------------------------------------------- retrain's store in messages


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://ann:s3cr%40t@db.local:5432/gw", "postgresql://ann:***@db.local:5432/gw"),
        ("postgresql://db.local/gw?password=s3cr%40t&sslmode=require", "postgresql://db.local/gw?password="),
        ("/var/lib/modelyard/store.db", "/var/lib/modelyard/store.db"),
    ],
)
def test_retrain_names_the_store_without_its_password(dsn: str, shown: str) -> None:
    pytest.importorskip("typer")
    from modelyard.cli.router_models import _scrub, _where

    assert _where(dsn).startswith(shown) and "s3cr" not in _where(dsn)
    quoted = f"could not connect with {dsn} (password 's3cr@t' and 's3cr%40t' refused)"
    scrubbed = _scrub(quoted, dsn)
    if dsn.startswith("postgresql"):
        assert "s3cr" not in scrubbed
        assert scrubbed.startswith("could not connect with postgresql://")  # the message keeps what it says
    else:
        assert scrubbed == quoted  # a file path has no password to hide
