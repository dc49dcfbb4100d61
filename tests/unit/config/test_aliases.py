"""Model aliases (`aliases:`): exact names win, then exact aliases, then the most specific pattern; an
alias is authorised as its target."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from modelyard.config.loader import ConfigError, ConfigErrors, parse_config
from modelyard.routing.aliases import MEMO_SIZE, Aliases
from modelyard.routing.features import RequestFeatures
from modelyard.routing.plan import make_plan
from modelyard.routing.table import RoutingTable
from modelyard.schema.errors import GatewayError
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.sim.fleet import Fleet, SimModel
from modelyard.sim.server import SimServer
from tests.unit.routing.helpers import ctx

MASTER = "sk-master-alias-test-0123456789"


def config_text(base: str = "http://127.0.0.1:9/v1", aliases: str = "", access: str = "") -> str:
    return f"""
deployments:
  - {{name: big, provider: openai, model: sim-big, api_base: "{base}", api_key: k, price: {{input: 1, output: 1}}}}
  - {{name: small, provider: openai, model: sim-small, api_base: "{base}", api_key: k, price: {{input: 1, output: 1}}}}
models:
  smart: {{candidates: [big]}}
  fast: {{candidates: [small]}}
aliases:
{aliases}
{access}
"""


ALIASES = """  "claude-*": smart
  "claude-3-5-haiku*": fast
  "gpt-4o": fast
  "*-mini": fast
"""


def test_resolution_order() -> None:
    table = RoutingTable.from_config(parse_config(config_text(aliases=ALIASES)))
    assert table.resolve("smart") == "smart"  # a model
    assert table.resolve("small") == "small"  # a deployment
    assert table.resolve("gpt-4o") == "fast"  # an exact alias
    assert table.resolve("claude-sonnet-4-5-20250929") == "smart"
    assert table.resolve("claude-3-5-haiku-20241022") == "fast"  # the more specific pattern wins
    assert table.resolve("claude-x-mini") == "smart"  # 7 literal characters beat 5
    assert table.resolve("o4-mini") == "fast"
    assert table.resolve("llama") == "llama"  # unknown: left for the planner's 404


def test_patterns_match_the_whole_name_and_only_star_and_question_are_special() -> None:
    aliases = Aliases({"gpt-4.?": "a", "claude-*": "b"})
    assert aliases.resolve("gpt-4.1") == "a"
    assert aliases.resolve("gpt-4x1") is None  # `.` is literal
    assert aliases.resolve("my-claude-3") is None  # anchored at the start
    assert aliases.resolve("claude-") == "b"


def test_memo_is_bounded() -> None:
    aliases = Aliases({"claude-*": "smart"})
    for i in range(MEMO_SIZE + 10):
        aliases.resolve(f"nope-{i}")
    assert len(aliases._memo) <= MEMO_SIZE


def test_planner_serves_an_alias_and_still_404s_unknown_names() -> None:
    table = RoutingTable.from_config(parse_config(config_text(aliases=ALIASES)))
    plan = make_plan(table, "claude-opus-4-1", ctx(RequestFeatures(prompt_tokens=10)))
    assert plan.model == "smart" and [d.name for d in plan.order] == ["big"]
    with pytest.raises(GatewayError) as caught:
        make_plan(table, "llama", ctx(RequestFeatures(prompt_tokens=10)))
    assert caught.value.status == 404


@pytest.mark.parametrize(
    ("aliases", "message"),
    [
        ('  "claude-*": nowhere\n', "unknown alias target 'nowhere'"),
        ("  smart: fast\n", "already a configured name"),
        ('  "*": fast\n', "at least one literal character"),
    ],
)
def test_bad_aliases_are_config_errors_at_their_line(aliases: str, message: str) -> None:
    with pytest.raises((ConfigError, ConfigErrors)) as caught:
        parse_config(config_text(aliases=aliases), source="gw.yaml")
    assert message in str(caught.value)
    assert "gw.yaml:9" in str(caught.value)


# ------------------------------------------------------------------ authorised as the target


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    fleet = Fleet(models=[SimModel(name="sim-big", output_tokens=5), SimModel(name="sim-small", output_tokens=5)])
    store = tmp_path_factory.mktemp("aliases") / "gw.db"
    with SimServer(fleet, instant=True) as sim:
        access = f"access: {{master_key: {MASTER}}}\nspend: {{store: {store}}}"
        config = parse_config(config_text(sim.openai_base, ALIASES, access))
        with BackgroundServer(create_app(config)) as server:
            yield server.url


def _key(url: str, models: list[str]) -> str:
    r = httpx.post(
        url + "/admin/keys",
        json={"name": "-".join(models), "models": models},
        headers={"authorization": f"Bearer {MASTER}"},
    )
    assert r.status_code == 200, r.text
    return str(r.json()["key"])


def _chat(url: str, key: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})


def test_a_key_allowed_the_target_may_use_its_alias(gateway_url: str) -> None:
    key = _key(gateway_url, ["smart"])
    r = _chat(gateway_url, key, "claude-sonnet-4-5")
    assert r.status_code == 200, r.text
    assert r.headers["x-modelyard-model"] == "big"


def test_a_key_not_allowed_the_target_is_refused(gateway_url: str) -> None:
    key = _key(gateway_url, ["fast"])
    r = _chat(gateway_url, key, "claude-sonnet-4-5")
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "model_not_allowed"
    assert _chat(gateway_url, key, "claude-3-5-haiku-latest").status_code == 200
