"""Fleet spec: the built-in fleet, YAML loading, validation errors naming the bad path, run-time patches."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.sim import Fleet, FleetError, Latency, TokenRange, default_fleet, load_fleet
from modelyard.sim.fleet import fleet_from_dict, patch_model


def test_default_fleet_has_three_clearly_different_chat_models_and_an_embedder() -> None:
    fleet = default_fleet()
    names = [m.name for m in fleet.models]
    assert {"sim-large", "sim-medium", "sim-small", "sim-embed"} <= set(names)
    large, medium, small = (fleet.model(n) for n in ("sim-large", "sim-medium", "sim-small"))
    assert large and medium and small
    assert large.price and medium.price and small.price
    # price: large > medium > small, in and out
    assert large.price.input > medium.price.input > small.price.input
    assert large.price.output > medium.price.output > small.price.output
    # quality (the accuracy on answer keys) follows price, by default and on every task it names
    assert large.accuracy(None) > medium.accuracy(None) > small.accuracy(None)
    for task in ("classification", "extraction", "code_fix"):
        assert large.accuracy(task) >= medium.accuracy(task) >= small.accuracy(task)
    # speed: the small one is the fastest to first token and per token
    assert isinstance(large.ttft_ms, Latency) and isinstance(small.ttft_ms, Latency)
    assert isinstance(medium.ttft_ms, Latency)
    assert large.ttft_ms.p50 > medium.ttft_ms.p50 > small.ttft_ms.p50
    assert large.tokens_per_second < medium.tokens_per_second < small.tokens_per_second
    embed = fleet.model("sim-embed")
    assert embed is not None and embed.kind == "embedding" and embed.dimensions == 384
    # no fault is on by default
    for model in fleet.models:
        assert sum(model.faults.rates()) == 0.0


def test_fleet_yaml_from_the_docs_loads(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(
        """
seed: 7
api_key: null
models:
  - name: sim-large
    price: {input: 5.0, output: 15.0}
    quality: 0.9
    context_window: 128000
    ttft_ms: {p50: 400, p95: 900}
    tokens_per_second: 60
    output_tokens: {min: 20, max: 120}
    faults: {rate_limit: 0.0, retry_after_s: 1, server_error: 0.0, unavailable: 0.0, hang: 0.0, reset: 0.0,
             malformed: 0.0, cut_stream: 0.0}
  - name: sim-embed
    kind: embedding
    dimensions: 384
"""
    )
    fleet = load_fleet(path)
    assert fleet.seed == 7 and fleet.api_key is None
    large = fleet.model("sim-large")
    assert large is not None
    assert large.ttft_ms == Latency(p50=400, p95=900)
    assert large.output_tokens == TokenRange(min=20, max=120)
    assert large.faults.retry_after_s == 1
    assert fleet.model("sim-embed") is not None


def test_fixed_numbers_are_accepted_for_latency_and_lengths() -> None:
    spec = {"name": "m", "ttft_ms": 25, "output_tokens": 10, "reasoning_tokens": 3}
    fleet = fleet_from_dict({"models": [spec]})
    model = fleet.models[0]
    assert model.ttft_ms == 25 and model.output_tokens == 10 and model.reasoning_tokens == 3


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ({"models": [{"name": "m", "ttft_ms": {"p50": 400, "p95": 100}}]}, "p95 must be >= p50"),
        ({"models": [{"name": "m", "faults": {"rate_limit": 1.5}}]}, "rate_limit"),
        ({"models": [{"name": "m", "faults": {"rate_limit": 0.6, "hang": 0.6}}]}, "add up to 1.2"),
        ({"models": [{"name": "m", "speed": 3}]}, "speed"),
        ({"models": [{"name": "m", "output_tokens": {"min": 9, "max": 3}}]}, "min <= max"),
        ({"models": [{"name": "m"}, {"name": "m"}]}, "listed twice"),
        ({"models": [{"name": "m", "tokens_per_second": "fast"}]}, "models[0].tokens_per_second"),
        ({"models": [{"name": "m", "cache_hit_rate": 2}]}, "cache_hit_rate"),
        ({"seed": 1}, "models"),
        ([1, 2], "mapping"),
    ],
)
def test_invalid_fleets_are_reported_with_source_and_path(doc: object, fragment: str) -> None:
    with pytest.raises(FleetError) as err:
        fleet_from_dict(doc, "fleet.yaml")
    assert str(err.value).startswith("fleet.yaml:")
    assert fragment in str(err.value)


def test_bad_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("models: [\n")
    with pytest.raises(FleetError, match=r"bad\.yaml: not valid YAML"):
        load_fleet(path)


def test_patch_merges_faults_key_by_key_and_validates() -> None:
    spec = {"name": "m", "faults": {"hang": 0.1, "retry_after_s": 3}}
    model = fleet_from_dict({"models": [spec]}).models[0]
    patched = patch_model(model, {"faults": {"rate_limit": 0.3}, "tokens_per_second": 10})
    assert patched.faults.rate_limit == 0.3
    assert patched.faults.hang == 0.1  # kept
    assert patched.faults.retry_after_s == 3  # kept
    assert patched.tokens_per_second == 10
    with pytest.raises(FleetError, match="add up"):
        patch_model(model, {"faults": {"rate_limit": 0.95}})
    with pytest.raises(FleetError, match="renamed"):
        patch_model(model, {"name": "other"})


def test_instant_removes_all_latency_and_keeps_the_rest() -> None:
    fleet = default_fleet()
    instant = fleet.instant()
    assert isinstance(instant, Fleet)
    for before, after in zip(fleet.models, instant.models, strict=True):
        assert after.ttft_ms == 0 and after.tokens_per_second == 0
        assert after.price == before.price and after.quality == before.quality
