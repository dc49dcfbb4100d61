"""The name the quality model knows a deployment by: one rule, used by the gateway and by the lab's replay."""

from __future__ import annotations

from modelyard.config.loader import parse_config
from modelyard.routing.intelligence import Intelligence, router_model_of

CONFIG = """
deployments:
  - {name: mixtral@together, provider: openai, model: mistralai/Mixtral-8x7B-Instruct-v0.1}
  - {name: gpt4@azure, provider: openai, model: my-gpt4-deployment, router_model: gpt-4-1106-preview}
models:
  smart: {strategy: learned, candidates: [mixtral@together, gpt4@azure]}
"""


def test_router_model_then_the_provider_model_id() -> None:
    config = parse_config(CONFIG)
    by_name = {d.name: d for d in config.deployments}
    assert router_model_of(by_name["gpt4@azure"]) == "gpt-4-1106-preview"
    assert router_model_of(by_name["mixtral@together"]) == "mistralai/Mixtral-8x7B-Instruct-v0.1"


def test_intelligence_maps_every_deployment_by_that_rule() -> None:
    config = parse_config(CONFIG)
    intelligence = Intelligence.from_config(config)
    assert intelligence.learned_models == {"smart"}
    assert intelligence.router_models == {d.name: router_model_of(d) for d in config.deployments}
    assert intelligence.router_models["gpt4@azure"] == "gpt-4-1106-preview"
