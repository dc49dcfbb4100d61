"""Answer keys: a simulated model answers a suite's cases right with its per-task accuracy, reproducibly."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelyard.sim import SimServer
from modelyard.sim.answer_keys import MAX_KEYS, AnswerKey, AnswerKeys, derived_wrong, read_suite
from modelyard.sim.app import create_app
from modelyard.sim.behaviour import generate
from modelyard.sim.fleet import FleetError, SimModel, default_fleet, fleet_from_dict, load_fleet
from modelyard.sim.shapes import Ask, ToolSpec

from .sim_helpers import asgi_call

SUITE: dict[str, Any] = {
    "schema": "modelyard.acceptance/v1",
    "name": "desk",
    "tasks": {
        "classification": {
            "cases": [
                {"id": "c1", "prompt": "Classify: I want my money back", "reference": "refund", "wrong": "shipping"},
                {"id": "c2", "prompt": "Classify: where is my parcel", "reference": "shipping"},
                {"id": "c3", "prompt": "Classify: my card was charged twice", "reference": "billing"},
            ]
        },
        "extraction": {
            "cases": [
                {
                    "id": "e1",
                    "messages": [
                        {"role": "system", "content": "Extract as JSON."},
                        {"role": "user", "content": [{"type": "text", "text": "Ada Lovelace, born 1815"}]},
                    ],
                    "reference": {"name": "Ada Lovelace", "born": 1815},
                },
                {"id": "e2", "prompt": "no reference here"},
            ]
        },
    },
}


def write_suite(tmp_path: Path, data: dict[str, Any] = SUITE, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture
def keys(tmp_path: Path) -> AnswerKeys:
    keys = AnswerKeys()
    keys.add_file(write_suite(tmp_path))
    return keys


def answer(keys: AnswerKeys, prompt: str, quality: Any, seed: int | None = None, **ask: Any) -> str:
    model = SimModel(name="m", quality=quality)
    return generate(
        Ask(model="m", prompt_tokens=5, last_user_text=prompt, seed=seed, **ask), model, random.Random(), keys
    ).text


def test_reader_takes_prompts_messages_and_json_references(tmp_path: Path) -> None:
    keys = read_suite(write_suite(tmp_path))
    assert set(keys) == {
        "Classify: I want my money back",
        "Classify: where is my parcel",
        "Classify: my card was charged twice",
        "Ada Lovelace, born 1815",
    }  # e2 has no reference: no key
    extraction = keys["Ada Lovelace, born 1815"]
    assert extraction.task == "extraction" and json.loads(extraction.reference) == {
        "name": "Ada Lovelace",
        "born": 1815,
    }
    assert keys["Classify: I want my money back"].wrong == "shipping"


def test_reader_errors_name_the_file_and_key(tmp_path: Path) -> None:
    with pytest.raises(FleetError, match=r"bad\.yaml: tasks\.t\.cases: a list"):
        read_suite(write_suite(tmp_path, {"tasks": {"t": {"cases": "x"}}}, "bad.yaml"))
    with pytest.raises(FleetError, match=r"nope\.yaml: cannot read"):
        read_suite(tmp_path / "nope.yaml")
    with pytest.raises(FleetError, match="`tasks` mapping"):
        read_suite(write_suite(tmp_path, {"name": "x"}, "empty.yaml"))


def test_perfect_and_hopeless_models(keys: AnswerKeys) -> None:
    assert answer(keys, "Classify: I want my money back", 1.0) == "refund"
    assert answer(keys, "Classify: I want my money back", 0.0) == "shipping"  # the case's own wrong answer
    # no `wrong`: another case's reference of the same task, never the right one
    wrong = answer(keys, "Classify: where is my parcel", 0.0)
    assert wrong in {"refund", "billing"}


def test_same_case_same_seed_same_answer_whatever_the_request_rng(keys: AnswerKeys) -> None:
    model = SimModel(name="m", quality=0.5)
    outs = {
        generate(
            Ask(model="m", prompt_tokens=5, last_user_text="Classify: I want my money back", seed=3),
            model,
            random.Random(i),
            keys,
        ).text
        for i in range(20)
    }
    assert len(outs) == 1


@pytest.mark.parametrize(("task", "prompts"), [("classification", 3), ("extraction", 1)])
def test_observed_rate_matches_the_per_task_accuracy(keys: AnswerKeys, task: str, prompts: int) -> None:
    quality = {"default": 0.5, "classification": 0.9, "extraction": 0.3}
    expected = quality[task]
    cases = [k for k in read_suite_keys(keys) if k.task == task]
    assert len(cases) == prompts
    n = right = 0
    for key in cases:
        for seed in range(2000):
            n += 1
            right += answer(keys, key.prompt, quality, seed) == key.reference
    rate = right / n
    assert abs(rate - expected) < 4 * math.sqrt(expected * (1 - expected) / n), (rate, expected)


def read_suite_keys(keys: AnswerKeys) -> list[AnswerKey]:
    return [k for p in keys._by_prompt for k in [keys.get(p)] if k is not None]


def test_models_draw_independently(keys: AnswerKeys) -> None:
    prompt = "Classify: I want my money back"
    a = [answer(keys, prompt, 0.5, seed) == "refund" for seed in range(200)]
    model = SimModel(name="other", quality=0.5)
    b = [
        generate(Ask(model="other", prompt_tokens=5, last_user_text=prompt, seed=s), model, random.Random(), keys).text
        == "refund"
        for s in range(200)
    ]
    assert a != b


def test_json_mode_answers_the_reference_verbatim_and_wrong_json_differs(keys: AnswerKeys) -> None:
    prompt = "Ada Lovelace, born 1815"
    right = answer(keys, prompt, 1.0, json_mode=True)
    assert json.loads(right) == {"name": "Ada Lovelace", "born": 1815}
    wrongs = {answer(keys, prompt, 0.0, seed, json_mode=True) for seed in range(40)}
    for wrong in wrongs:
        document = json.loads(wrong)  # still JSON: a plausible, wrong extraction
        assert isinstance(document, dict) and document != {"name": "Ada Lovelace", "born": 1815}
    assert len(wrongs) > 1  # fields dropped and altered, not one fixed answer


def test_derived_wrong_text_without_siblings_is_not_the_reference() -> None:
    key = AnswerKey(task="t", case_id="1", prompt="p", reference="42")
    assert derived_wrong(key, ["42"], random.Random(0)) != "42"


def test_tools_and_unknown_prompts_keep_the_usual_behaviour(keys: AnswerKeys) -> None:
    prompt = "Classify: I want my money back"
    tool = ToolSpec("lookup", {"type": "object", "properties": {}})
    model = SimModel(name="m", quality=1.0)
    with_tools = generate(
        Ask(model="m", prompt_tokens=5, last_user_text=prompt, tools=[tool], tool_mode="required"),
        model,
        random.Random(0),
        keys,
    )
    assert with_tools.tool_calls and with_tools.text == ""
    assert answer(keys, "something else entirely", 1.0) not in {"refund", "shipping", "billing"}


def test_accuracy_reads_quality_per_task_with_default() -> None:
    assert SimModel(name="m", quality={"default": 0.4, "x": 0.8}).accuracy("x") == 0.8
    assert SimModel(name="m", quality={"default": 0.4, "x": 0.8}).accuracy("y") == 0.4
    assert SimModel(name="m", quality=0.7).accuracy("y") == 0.7
    assert SimModel(name="m").accuracy("y") == 1.0
    with pytest.raises(FleetError, match=r"within \[0, 1\]"):
        fleet_from_dict({"models": [{"name": "m", "quality": {"x": 1.5}}]})


def test_default_fleet_small_model_passes_classification_fails_extraction() -> None:
    models = {m.name: m for m in default_fleet().models}
    small, large = models["sim-small"], models["sim-large"]
    assert small.accuracy("classification") >= 0.9 > small.accuracy("extraction")
    assert large.accuracy("extraction") >= 0.9 and large.accuracy("classification") >= 0.9
    assert small.accuracy(None) == 0.55  # the old single quality stays the default


def test_adding_a_file_again_replaces_its_keys(tmp_path: Path) -> None:
    keys = AnswerKeys()
    path = write_suite(tmp_path)
    assert keys.add_file(path) == 4
    assert keys.add_file(path) == 4
    assert len(keys) == 4
    many = {str(i): AnswerKey(task="t", case_id=str(i), prompt=str(i), reference="r") for i in range(MAX_KEYS)}
    with pytest.raises(FleetError, match="more than"):
        keys.add("other", many)


def test_fleet_file_answer_keys_relative_to_the_fleet(tmp_path: Path) -> None:
    (tmp_path / "suites").mkdir()
    write_suite(tmp_path / "suites")
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(
        yaml.safe_dump(
            {"answer_keys": ["suites/suite.yaml"], "models": [{"name": "cheap", "quality": {"classification": 1.0}}]}
        )
    )
    fleet = load_fleet(fleet_file)
    assert fleet.answer_keys == [str(tmp_path / "suites" / "suite.yaml")]
    assert len(create_app(fleet).answer_keys) == 4


async def test_through_the_openai_wire_with_seed(tmp_path: Path) -> None:
    fleet = fleet_from_dict({"models": [{"name": "half", "quality": 0.5}]})
    app = create_app(fleet)
    assert app.add_answer_keys(write_suite(tmp_path)) == 4

    async def ask(seed: int) -> str:
        body = {
            "model": "half",
            "seed": seed,
            "messages": [{"role": "user", "content": "Classify: I want my money back"}],
        }
        result = await asgi_call(app, "POST", "/v1/chat/completions", body)
        content: str = result.json()["choices"][0]["message"]["content"]
        return content

    answers = [await ask(seed) for seed in range(40)]
    assert set(answers) == {"refund", "shipping"}  # the seed decides, both outcomes occur
    assert answers == [await ask(seed) for seed in range(40)]  # and replays exactly


def test_sim_server_hook_for_in_process_fleets(tmp_path: Path) -> None:
    import openai

    with SimServer(fleet_from_dict({"models": [{"name": "sure", "quality": 1.0}]}), instant=True) as sim:
        assert sim.add_answer_keys(write_suite(tmp_path)) == 4
        client = openai.OpenAI(base_url=sim.openai_base, api_key="x")
        reply = client.chat.completions.create(
            model="sure", messages=[{"role": "user", "content": "Classify: my card was charged twice"}]
        )
        assert reply.choices[0].message.content == "billing"
