"""The scheduler: concurrency, fan-out bounds, conditions, loops, schemas, budgets, tools, failures."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from modelyard.schema.constraints import Constraints
from modelyard.schema.errors import ErrorKind, GatewayError, ProviderError
from modelyard.workflows import Workflow
from modelyard.workflows.backend import ModelCall
from modelyard.workflows.engine import EngineOptions
from modelyard.workflows.records import RunResult, RunStatus, StepState
from modelyard.workflows.scripted import Answer, ScriptedBackend
from tests.unit.workflows import wf_tools_fixture
from tests.unit.workflows.helpers import workflow


async def run(spec_body: str, backend: ScriptedBackend, inputs: dict[str, Any] | None = None, **kw: Any) -> RunResult:
    return await Workflow(workflow(spec_body)).run(inputs, backend=backend, **kw)


def prompt_of(backend: ScriptedBackend, step: str) -> str:
    calls = [c for c in backend.calls if c.metadata["step"] == step]
    assert calls, f"no call for {step}"
    return "\n".join(str(m["content"]) for m in calls[-1].messages)


# --------------------------------------------------------------------------- concurrency


async def test_two_independent_one_second_steps_finish_in_about_one_second() -> None:
    backend = ScriptedBackend(delay_s=1.0)
    started = time.perf_counter()
    result = await run("steps:\n  a: {model: m, prompt: one}\n  b: {model: m, prompt: two}\n", backend)
    elapsed = time.perf_counter() - started
    assert result.status is RunStatus.SUCCEEDED
    assert 1.0 <= elapsed < 1.5, elapsed
    assert backend.peak_in_flight == 2


async def test_dependent_steps_wait_for_their_needs() -> None:
    backend = ScriptedBackend(delay_s=0.05)
    result = await run(
        "steps:\n  a: {model: m, prompt: one}\n  b: {model: m, needs: [a], prompt: '{{ a }}'}\n", backend
    )
    a, b = result.records["a"], result.records["b"]
    assert a.finished_at is not None and b.started_at is not None
    assert b.started_at >= a.finished_at
    assert backend.peak_in_flight == 1


async def test_fan_out_is_bounded_by_max_parallel() -> None:
    backend = ScriptedBackend(delay_s=0.03)
    result = await run(
        """
        steps:
          each:
            model: m
            foreach: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
            max_parallel: 3
            prompt: "item {{ item }} at {{ item_index }}"
        """,
        backend,
    )
    assert result.status is RunStatus.SUCCEEDED
    assert backend.peak_in_flight == 3
    aggregate = result.records["each"]
    assert aggregate.kind == "foreach" and aggregate.items == 10
    assert len(aggregate.output) == 10
    assert [result.records[f"each[{i}]"].state for i in range(10)] == [StepState.SUCCEEDED] * 10
    assert "item 4 at 3" in prompt_of(backend, "each[3]")


async def test_workflow_max_parallel_bounds_all_calls() -> None:
    backend = ScriptedBackend(delay_s=0.03)
    await run(
        """
        max_parallel: 2
        steps:
          a: {model: m, foreach: [1, 2, 3, 4], prompt: "{{ item }}"}
          b: {model: m, foreach: [1, 2, 3, 4], prompt: "{{ item }}"}
        """,
        backend,
    )
    assert backend.peak_in_flight == 2


async def test_foreach_over_a_previous_steps_json_list() -> None:
    backend = ScriptedBackend(answers={"plan": ['{"queries": ["x", "y"]}']})
    result = await run(
        """
        steps:
          plan:
            model: m
            prompt: plan
            output: {schema: {type: object, properties: {queries: {type: array, items: {type: string}}}}}
          search: {model: m, needs: [plan], foreach: "{{ plan.queries }}", prompt: "find {{ item }}"}
        """,
        backend,
    )
    assert result.records["search"].items == 2
    assert "find y" in prompt_of(backend, "search[1]")


async def test_foreach_that_is_not_a_list_fails_the_step() -> None:
    backend = ScriptedBackend(answers={"a": ["just words"]})
    result = await run(
        """
        steps:
          a: {model: m, prompt: x}
          b: {model: m, needs: [a], foreach: "{{ a }}", prompt: "{{ item }}"}
        """,
        backend,
    )
    assert result.records["b"].state is StepState.FAILED
    assert "foreach must give a list" in (result.records["b"].error or "")


# --------------------------------------------------------------------------- scoping


async def test_a_step_is_sent_only_what_it_needs() -> None:
    backend = ScriptedBackend(answers={"a": ["ALPHA-OUTPUT"], "b": ["BETA-OUTPUT"]})
    result = await run(
        """
        inputs: {goal: string}
        steps:
          a: {model: m, prompt: "a for {{ inputs.goal }}"}
          b: {model: m, prompt: "b"}
          c: {model: m, needs: [a, b], prompt: "uses {{ a }}"}
          d: {model: m, needs: [a], prompt: "only {{ a }}"}
        """,
        backend,
        {"goal": "GOAL"},
    )
    assert result.status is RunStatus.SUCCEEDED
    sent_d = prompt_of(backend, "d")
    assert "ALPHA-OUTPUT" in sent_d and "BETA-OUTPUT" not in sent_d
    assert "BETA-OUTPUT" not in prompt_of(backend, "c")  # needed but not used: still not sent
    assert "GOAL" in prompt_of(backend, "a")
    assert result.records["d"].context == ["a"]


async def test_structured_outputs_render_as_json_in_text() -> None:
    backend = ScriptedBackend(answers={"a": ['{"k": [1, 2]}']})
    await run(
        """
        steps:
          a: {model: m, prompt: x, output: {schema: {type: object}}}
          b: {model: m, needs: [a], prompt: "data={{ a }} k={{ a.k | join(',') }}"}
        """,
        backend,
    )
    assert 'data={"k": [1, 2]} k=1,2' in prompt_of(backend, "b")


# --------------------------------------------------------------------------- conditions and loops


async def test_when_false_skips_the_step_and_dependents_see_none() -> None:
    backend = ScriptedBackend(answers={"plan": ['{"go": false}']})
    result = await run(
        """
        steps:
          plan: {model: m, prompt: x, output: {schema: {type: object, properties: {go: {type: boolean}}}}}
          extra: {model: m, needs: [plan], when: "{{ plan.go }}", prompt: never}
          final: {model: m, needs: [extra], prompt: "extra={{ extra if extra is not none else 'none' }}"}
        outputs: {answer: "{{ extra or 'fallback' }}"}
        """,
        backend,
    )
    assert result.records["extra"].state is StepState.SKIPPED
    assert not any(c.metadata["step"] == "extra" for c in backend.calls)
    assert "extra=none" in prompt_of(backend, "final")
    assert result.status is RunStatus.SUCCEEDED
    assert result.outputs == {"answer": "fallback"}


async def test_when_true_runs_the_step() -> None:
    backend = ScriptedBackend(answers={"plan": ['{"go": true}']})
    result = await run(
        """
        steps:
          plan: {model: m, prompt: x, output: {schema: {type: object}}}
          extra: {model: m, needs: [plan], when: "{{ plan.go }}", prompt: "go on"}
        """,
        backend,
    )
    assert result.records["extra"].state is StepState.SUCCEEDED


LOOP = """
steps:
  spec: {model: m, prompt: "design"}
  build:
    needs: [spec]
    loop:
      max_iterations: 3
      until: "{{ review.approved }}"
      steps:
        code:
          model: coder
          needs: [spec]
          prompt: >-
            round {{ iteration.index }};
            fix: {{ iteration.previous.review.feedback if iteration.previous else 'none' }}
        review:
          model: reviewer
          needs: [code]
          prompt: "review {{ code }}"
          output: {schema: {type: object, required: [approved], properties: {approved: {type: boolean}}}}
outputs: {code: "{{ build.code }}"}
"""


async def test_loop_stops_when_until_holds() -> None:
    backend = ScriptedBackend(
        answers={
            "build#1.review": ['{"approved": false, "feedback": "add tests"}'],
            "build#2.review": ['{"approved": true}'],
            "build#2.code": ["final code"],
        }
    )
    result = await run(LOOP, backend)
    loop = result.records["build"]
    assert loop.state is StepState.SUCCEEDED and loop.iterations == 2
    assert "`until` held after 2 of 3" in (loop.note or "")
    assert "fix: add tests" in prompt_of(backend, "build#2.code")
    assert "fix: none" in prompt_of(backend, "build#1.code")
    assert result.outputs == {"code": "final code"}
    assert not any(c.metadata["step"].startswith("build#3") for c in backend.calls)


async def test_loop_is_bounded_by_max_iterations() -> None:
    backend = ScriptedBackend(answers={"build.review": ['{"approved": false, "feedback": "no"}']})
    result = await run(LOOP, backend)
    loop = result.records["build"]
    assert loop.iterations == 3 and loop.state is StepState.SUCCEEDED
    assert "without `until` holding" in (loop.note or "")
    rounds = sorted({c.metadata["step"].split(".")[0] for c in backend.calls if c.model == "coder"})
    assert rounds == ["build#1", "build#2", "build#3"]
    inner = [r for k, r in result.records.items() if k.startswith("build#")]
    assert len(inner) == 6 and loop.cost_usd == pytest.approx(sum(r.cost_usd for r in inner))


async def test_failure_inside_a_loop_fails_the_loop_and_its_dependents() -> None:
    backend = ScriptedBackend(answers={"build.code": [ProviderError(ErrorKind.BAD_REQUEST, "nope")]})
    after = "  after: {model: m, needs: [build], prompt: '{{ build.code }}'}\n"
    spec = LOOP.replace("outputs:", after + "outputs:")
    result = await run(spec, backend)
    assert result.records["build"].state is StepState.FAILED
    assert "round 1" in (result.records["build"].error or "")
    assert result.records["after"].state is StepState.BLOCKED
    assert result.status is RunStatus.PARTIAL


# --------------------------------------------------------------------------- structured output


SCHEMA_STEP = """
steps:
  plan:
    model: m
    prompt: plan it
    output:
      schema: {type: object, required: [queries], properties: {queries: {type: array, items: {type: string}}}}
"""


async def test_response_format_asks_for_the_schema() -> None:
    backend = ScriptedBackend()
    result = await run(SCHEMA_STEP, backend)
    call = backend.calls[0]
    assert call.response_format is not None and call.response_format["type"] == "json_schema"
    assert call.response_format["json_schema"]["name"] == "plan"
    assert call.response_format["json_schema"]["schema"]["required"] == ["queries"]
    assert isinstance(result.records["plan"].output["queries"], list)


async def test_invalid_answer_is_repaired_once_showing_the_error() -> None:
    fenced = '```json\n{"queries": ["a"]}\n```'
    backend = ScriptedBackend(answers={"plan": ['{"queries": "not a list"}', fenced]})
    result = await run(SCHEMA_STEP, backend)
    record = result.records["plan"]
    assert record.state is StepState.SUCCEEDED and record.repaired
    assert record.output == {"queries": ["a"]}
    assert len(backend.calls) == 2
    repair = backend.calls[1].messages
    assert repair[-2] == {"role": "assistant", "content": '{"queries": "not a list"}'}
    assert "did not validate" in repair[-1]["content"] and "queries" in repair[-1]["content"]
    assert record.attempts == 2 and record.cost_usd > 0
    assert result.cost_usd == pytest.approx(record.cost_usd)
    first_prompt = backend.estimate(backend.calls[0]).prompt_tokens
    assert record.prompt_tokens > 2 * first_prompt  # both calls' prompts are counted


async def test_answer_still_invalid_after_repair_fails_and_keeps_its_cost() -> None:
    backend = ScriptedBackend(answers={"plan": ["not json at all", '{"wrong": 1}']})
    result = await run(SCHEMA_STEP + "  after: {model: m, needs: [plan], prompt: x}\n", backend)
    record = result.records["plan"]
    assert record.state is StepState.FAILED
    assert "even after one repair" in (record.error or "") and "queries" in (record.error or "")
    assert len(backend.calls) == 2
    assert record.cost_usd > 0
    assert result.cost_usd == pytest.approx(record.cost_usd)
    assert result.records["after"].state is StepState.BLOCKED


# --------------------------------------------------------------------------- failures and retries


async def test_failing_step_fails_only_its_dependents() -> None:
    backend = ScriptedBackend(answers={"bad": [ProviderError(ErrorKind.BAD_REQUEST, "rejected")]})
    result = await run(
        """
        steps:
          bad: {model: m, prompt: x}
          good: {model: m, prompt: y}
          child: {model: m, needs: [bad], prompt: "{{ bad }}"}
          grandchild: {model: m, needs: [child], prompt: "{{ child }}"}
          sibling: {model: m, needs: [good], prompt: "{{ good }}"}
        outputs: {ok: "{{ sibling }}", broken: "{{ grandchild }}"}
        """,
        backend,
    )
    states = {k: r.state for k, r in result.steps.items()}
    assert states == {
        "bad": StepState.FAILED,
        "good": StepState.SUCCEEDED,
        "child": StepState.BLOCKED,
        "grandchild": StepState.BLOCKED,
        "sibling": StepState.SUCCEEDED,
    }
    assert result.status is RunStatus.PARTIAL
    assert "ok" in result.outputs and "broken" not in result.outputs
    assert any("bad_request: rejected" in e for e in result.errors)
    assert any("output 'broken'" in e for e in result.errors)


async def test_retryable_errors_are_retried_up_to_retries(fast_retries: EngineOptions) -> None:
    flaky: list[Answer] = [
        ProviderError(ErrorKind.RATE_LIMITED, "slow down", retry_after=0.001),
        ProviderError(ErrorKind.SERVER, "boom"),
        "ok",
    ]
    backend = ScriptedBackend(answers={"a": list(flaky)})
    result = await run("steps:\n  a: {model: m, prompt: x, retries: 2}\n", backend, options=fast_retries)
    assert result.records["a"].state is StepState.SUCCEEDED and result.records["a"].attempts == 3

    backend = ScriptedBackend(answers={"a": list(flaky)})
    result = await run("steps:\n  a: {model: m, prompt: x, retries: 1}\n", backend, options=fast_retries)
    record = result.records["a"]
    assert record.state is StepState.FAILED and "server: boom" in (record.error or "")


async def test_gateway_errors_are_not_retried(fast_retries: EngineOptions) -> None:
    backend = ScriptedBackend(answers={"a": [GatewayError(400, "bad model"), "ok"]})
    result = await run("steps:\n  a: {model: m, prompt: x, retries: 3}\n", backend, options=fast_retries)
    assert result.records["a"].state is StepState.FAILED and result.records["a"].attempts == 1
    assert "HTTP 400: bad model" in (result.records["a"].error or "")


async def test_timeout_per_attempt(fast_retries: EngineOptions) -> None:
    backend = ScriptedBackend(delays={"a": 5.0})
    started = time.perf_counter()
    body = "steps:\n  a: {model: m, prompt: x, timeout: 0.1, retries: 1}\n"
    result = await run(body, backend, options=fast_retries)
    assert time.perf_counter() - started < 1.0
    record = result.records["a"]
    assert record.state is StepState.FAILED and record.attempts == 2 and "timed out" in (record.error or "")


async def test_template_error_at_runtime_fails_the_step() -> None:
    backend = ScriptedBackend(answers={"a": ['{"x": 1}']})
    result = await run(
        "steps:\n  a: {model: m, prompt: x, output: {schema: {type: object}}}\n"
        "  b: {model: m, needs: [a], prompt: '{{ a.missing.deeper }}'}\n",
        backend,
    )
    assert result.records["b"].state is StepState.FAILED
    assert "missing" in (result.records["b"].error or "")


# --------------------------------------------------------------------------- budgets


async def test_budget_stops_before_a_step_that_would_break_it() -> None:
    backend = ScriptedBackend(prices={"cheap": (1.0, 1.0), "pricey": (1000.0, 1000.0)})
    result = await run(
        """
        budget: {max_cost_usd: 0.01}
        steps:
          first: {model: cheap, prompt: "small job"}
          second: {model: pricey, needs: [first], prompt: "big job {{ first }}"}
          third: {model: cheap, needs: [second], prompt: "{{ second }}"}
        """,
        backend,
    )
    assert result.status is RunStatus.STOPPED
    assert result.records["first"].state is StepState.SUCCEEDED
    assert result.records["second"].state is StepState.STOPPED
    assert result.records["third"].state is StepState.STOPPED
    assert [c.metadata["step"] for c in backend.calls] == ["first"]
    assert "stopped before 'second'" in (result.message or "") and "$0.01 budget" in (result.message or "")
    assert result.cost_usd <= 0.01


async def test_budget_reservations_stop_a_fan_out_midway() -> None:
    backend = ScriptedBackend(prices={"m": (100.0, 100.0)}, delay_s=0.01)
    result = await run(
        """
        budget: {max_cost_usd: 0.05}
        steps:
          each:
            model: m
            foreach: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
            max_parallel: 4
            prompt: "label {{ item }}"
        """,
        backend,
    )
    assert result.status is RunStatus.STOPPED
    assert 0 < len(backend.calls) < 12
    assert result.cost_usd <= 0.05
    assert result.records["each"].state is StepState.STOPPED


class NoEstimates(ScriptedBackend):
    """Like the HTTP backend: cannot estimate, so only the hard deadline can stop a slow step."""

    def estimate(self, call: ModelCall) -> Any:
        raise NotImplementedError


async def test_time_budget_cancels_what_is_still_running() -> None:
    backend = NoEstimates(delays={"slow": 5.0})
    started = time.perf_counter()
    body = "budget: {max_seconds: 0.3}\nsteps:\n  fast: {model: m, prompt: x}\n"
    body += "  slow: {model: m, prompt: y}\n"
    result = await run(body, backend)
    assert time.perf_counter() - started < 2.0
    assert result.status is RunStatus.STOPPED
    assert result.records["fast"].state is StepState.SUCCEEDED
    assert result.records["slow"].state is StepState.CANCELLED
    assert "time budget" in (result.message or "")


async def test_time_budget_stops_before_a_step_estimated_to_pass_it() -> None:
    backend = ScriptedBackend(delays={"long": 60.0})
    result = await run("budget: {max_seconds: 10}\nsteps:\n  long: {model: m, prompt: x}\n", backend)
    assert result.records["long"].state is StepState.STOPPED and not backend.calls
    assert "time budget" in (result.message or "")


# --------------------------------------------------------------------------- tools


async def test_tool_steps_sync_and_async_with_templated_args() -> None:
    backend = ScriptedBackend(answers={"a": ["hey"]})
    result = await run(
        """
        steps:
          a: {model: m, prompt: x}
          loud:
            call: "tests.unit.workflows.wf_tools_fixture:shout"
            needs: [a]
            args: {text: "{{ a }}", times: 2}
          nums:
            call: "tests.unit.workflows.wf_tools_fixture:slow_double"
            foreach: [1, 2, 3]
            args: {value: "{{ item }}"}
          use: {model: m, needs: [loud, nums], prompt: "{{ loud }} {{ nums | sum }}"}
        """,
        backend,
    )
    assert result.records["loud"].output == "HEY!HEY!"
    assert result.records["loud"].kind == "tool" and result.records["loud"].cost_usd == 0
    assert result.records["nums"].output == [2, 4, 6]
    assert "HEY!HEY! 12" in prompt_of(backend, "use")
    assert result.records["loud"].output_tokens > 0


async def test_tool_errors_fail_the_step_and_retries_apply(fast_retries: EngineOptions) -> None:
    backend = ScriptedBackend()
    body = "steps:\n  t: {call: 'tests.unit.workflows.wf_tools_fixture:explode', args: {reason: kaboom}}\n"
    result = await run(body, backend)
    assert result.records["t"].state is StepState.FAILED
    assert "RuntimeError: kaboom" in (result.records["t"].error or "")

    wf_tools_fixture.FLAKY = wf_tools_fixture.Flaky(failures=2)
    body = "steps:\n  t: {call: 'tests.unit.workflows.wf_tools_fixture:flaky', retries: 2}\n"
    result = await run(body, backend, options=fast_retries)
    assert result.records["t"].output == "steady" and result.records["t"].attempts == 3


async def test_tool_module_beside_the_workflow(tmp_path: Path) -> None:
    (tmp_path / "local_helpers.py").write_text("def answer(n):\n    return {'n': n, 'ok': True}\n")
    text = "schema: modelyard.workflow/v1\nname: t\nsteps:\n"
    text += "  t: {call: 'local_helpers:answer', args: {n: 7}}\n"
    (tmp_path / "wf.yaml").write_text(text)
    result = await Workflow.from_yaml(tmp_path / "wf.yaml").run(backend=ScriptedBackend())
    assert result.records["t"].output == {"n": 7, "ok": True}


# --------------------------------------------------------------------------- API


async def test_events_stream_and_typed_result() -> None:
    backend = ScriptedBackend()
    body = "steps:\n  a: {model: m, prompt: x}\n  b: {model: m, needs: [a], prompt: '{{ a }}'}\n"
    flow = Workflow(workflow(body))
    stream = flow.stream(backend=backend)
    kinds = [(event.kind, event.key) async for event in stream]
    assert kinds[0] == ("run_started", None) and kinds[-1] == ("run_finished", None)
    assert kinds.index(("step_finished", "a")) < kinds.index(("step_started", "b"))
    assert stream.result is not None and stream.result.status is RunStatus.SUCCEEDED


async def test_run_needs_a_backend_and_valid_inputs() -> None:
    flow = Workflow(workflow("inputs: {n: integer}\nsteps:\n  a: {model: m, prompt: '{{ inputs.n }}'}\n"))
    with pytest.raises(TypeError, match="backend"):
        await flow.run({"n": 1})
    from modelyard.workflows.inputs import InputError

    with pytest.raises(InputError, match="missing input 'n'"):
        await flow.run({}, backend=ScriptedBackend())
    with pytest.raises(InputError, match="should be integer"):
        await flow.run({"n": "x"}, backend=ScriptedBackend())
    result = await flow.run({"n": 4}, router=ScriptedBackend())
    assert result.status is RunStatus.SUCCEEDED


async def test_routing_hints_reach_the_backend() -> None:
    backend = ScriptedBackend()
    await run(
        """
        steps:
          a:
            model: fast
            task: classification
            route: {strategy: cost, constraints: {min_quality: 0.7}}
            temperature: 0.2
            max_tokens: 50
            prompt: x
        """,
        backend,
    )
    call: ModelCall = backend.calls[0]
    assert call.model == "fast" and call.temperature == 0.2 and call.max_tokens == 50
    assert call.route.task == "classification" and call.route.strategy == "cost"
    assert call.route.constraints == Constraints(min_quality=0.7)
    assert call.route.tags == ("workflow:test", f"run:{call.metadata['run']}", "step:a")
    assert call.metadata["workflow"] == "test" and call.metadata["step"] == "a"
