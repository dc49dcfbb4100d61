"""Streamed step output: token events per item in order, interleaved across parallel items, the same report
and checkpoint as an unstreamed run, schema steps and retries still right, and the CLI's line printer."""

from __future__ import annotations

import asyncio
import io
import itertools
from pathlib import Path
from typing import Any

from modelyard.schema.errors import ErrorKind, ProviderError
from modelyard.workflows import Workflow
from modelyard.workflows.backend import ModelCall, default_backend_factory
from modelyard.workflows.checkpoint import MemoryStore
from modelyard.workflows.engine import EngineOptions
from modelyard.workflows.event_queue import DEFAULT_LIMIT, EventQueue
from modelyard.workflows.records import RunEvent, RunResult, StepRecord
from modelyard.workflows.scripted import ScriptedBackend
from modelyard.workflows.streaming import TOKEN_EVENT, TokenPrinter
from tests.unit.workflows.helpers import workflow

RESEARCH = Path(__file__).resolve().parents[3] / "examples" / "workflows" / "research.yaml"
QUERIES = '{"queries": ["alpha beta", "gamma delta", "epsilon zeta", "eta theta"], "needs_synthesis": true}'


async def streamed(spec: Workflow, backend: ScriptedBackend, **kw: Any) -> tuple[list[RunEvent], RunResult]:
    stream = spec.stream(backend=backend, tokens=True, **kw)
    events = [event async for event in stream]
    assert stream.result is not None
    return events, stream.result


def tokens_by_key(events: list[RunEvent]) -> dict[str, list[RunEvent]]:
    found: dict[str, list[RunEvent]] = {}
    for event in events:
        if event.kind == TOKEN_EVENT:
            found.setdefault(event.key or "", []).append(event)
    return found


async def test_each_items_tokens_arrive_in_order_and_parallel_items_interleave() -> None:
    backend = ScriptedBackend(answers={"plan": [QUERIES]}, delay_s=0.05, answer_words=12)
    events, result = await streamed(Workflow.from_yaml(RESEARCH), backend)
    assert result.status.value == "succeeded"
    tokens = tokens_by_key(events)
    for index in range(4):
        key = f"search[{index}]"
        mine = tokens[key]
        assert len(mine) > 5  # word by word, not one block
        assert {(e.step, e.item, e.iteration, e.attempt) for e in mine} == {("search", index, None, 1)}
        assert "".join(e.message or "" for e in mine) == result.records[key].output
    # Every model step streamed, and its tokens join to its output (the schema step's to the JSON it parsed).
    assert "".join(e.message or "" for e in tokens["analyze"]) == result.records["analyze"].output
    assert "".join(e.message or "" for e in tokens["plan"]) == QUERIES
    # Parallel items interleave: the search tokens switch item far more often than once per item.
    order = [e.item for e in events if e.kind == TOKEN_EVENT and e.step == "search"]
    switches = sum(1 for a, b in itertools.pairwise(order) if a != b)
    assert switches > 10, order
    # Each item's tokens come after its step_started and before its step_finished.
    kinds = [(e.kind, e.key) for e in events]
    for index in range(4):
        key = f"search[{index}]"
        positions = [i for i, (kind, k) in enumerate(kinds) if k == key and kind == TOKEN_EVENT]
        assert kinds.index(("step_started", key)) < positions[0]
        assert positions[-1] < kinds.index(("step_finished", key))


def _comparable(record: StepRecord) -> tuple[Any, ...]:
    return (
        record.key,
        record.state,
        record.output,
        record.prompt_tokens,
        record.completion_tokens,
        record.output_tokens,
        record.cost_usd,
        record.attempts,
        record.repaired,
        record.deployment,
        record.inputs_hash,
    )


async def test_a_streamed_run_reports_and_checkpoints_exactly_what_an_unstreamed_one_does() -> None:
    spec = Workflow.from_yaml(RESEARCH)
    stores = MemoryStore(), MemoryStore()
    plain = await spec.run(backend=ScriptedBackend(answers={"plan": [QUERIES]}), store=stores[0], run_id="r")
    _, live = await streamed(spec, ScriptedBackend(answers={"plan": [QUERIES]}), store=stores[1], run_id="r")
    assert live.status == plain.status and live.outputs == plain.outputs and live.errors == plain.errors
    assert live.cost_usd == plain.cost_usd
    assert sorted(map(_comparable, live.records.values())) == sorted(map(_comparable, plain.records.values()))
    # The checkpoint holds no token events: the same entries, the same money.
    logs = [[(e.kind, e.key, e.cost_usd) for e in store.events("r")] for store in stores]
    assert sorted(logs[0], key=str) == sorted(logs[1], key=str)
    assert not any(kind == TOKEN_EVENT for kind, _, _ in logs[1])


async def test_a_schema_step_streams_its_text_and_is_repaired_with_numbered_attempts() -> None:
    body = (
        "steps:\n"
        "  pick:\n"
        "    model: m\n"
        "    prompt: choose\n"
        "    retries: 1\n"
        "    output: {schema: {type: object, required: [n], properties: {n: {type: integer}}}}\n"
    )
    flaky = ProviderError(ErrorKind.SERVER, "upstream hiccup")
    backend = ScriptedBackend(answers={"pick": [flaky, '{"n": "seven"}', '{"n": 7}']}, delay_s=0.01)
    options = EngineOptions(backoff_s=0.0)
    events, result = await streamed(Workflow(workflow(body)), backend, options=options)
    record = result.records["pick"]
    assert record.output == {"n": 7} and record.repaired and record.attempts == 3
    tokens = tokens_by_key(events)["pick"]
    by_attempt: dict[int, str] = {}
    for event in tokens:
        by_attempt[event.attempt] = by_attempt.get(event.attempt, "") + (event.message or "")
    # Attempt 1 failed before any text; attempt 2 streamed the invalid answer; the repair (3) the valid one.
    assert by_attempt == {2: '{"n": "seven"}', 3: '{"n": 7}'}


async def test_without_tokens_no_token_events_are_emitted() -> None:
    backend = ScriptedBackend(answers={"plan": [QUERIES]})
    stream = Workflow.from_yaml(RESEARCH).stream(backend=backend)
    kinds = {event.kind async for event in stream}
    assert TOKEN_EVENT not in kinds and "step_finished" in kinds


async def test_the_inprocess_backend_streams_through_the_gateway_with_the_same_answer() -> None:
    async with default_backend_factory(None, None) as local:  # the embedded simulator + demo config
        call = ModelCall(
            model="balanced", messages=[{"role": "user", "content": "Repeat: one two three four"}], max_tokens=20
        )
        whole = await local.call(call)
        pieces: list[str] = []
        streamed_answer = await local.call_streaming(call, pieces.append)  # type: ignore[attr-defined]
    assert pieces and "".join(pieces) == streamed_answer.text == whole.text == "one two three four"
    assert streamed_answer.usage == whole.usage and streamed_answer.deployment == whole.deployment
    assert streamed_answer.cost_usd == whole.cost_usd > 0 and streamed_answer.attempts == 1


async def test_a_loops_tokens_say_their_round() -> None:
    rejected = '{"approved": false, "feedback": "more tests"}'
    backend = ScriptedBackend(answers={"build.review": [rejected, '{"approved": true, "feedback": ""}']})
    events, result = await streamed(Workflow.from_yaml(RESEARCH.with_name("code_review.yaml")), backend)
    assert result.records["build"].iterations == 2
    tokens = tokens_by_key(events)
    for round_no in (1, 2):
        mine = tokens[f"build#{round_no}.code"]
        assert {(e.step, e.item, e.iteration) for e in mine} == {("build.code", None, round_no)}
        assert "".join(e.message or "" for e in mine) == result.records[f"build#{round_no}.code"].output
    out = io.StringIO()
    printer = TokenPrinter(out)
    for event in tokens["build#2.code"][:1]:
        printer.on_event(event)
    assert out.getvalue().startswith("[build.code@2] ")


def _token(key: str, step: str, item: int | None, text: str, attempt: int = 1) -> RunEvent:
    return RunEvent(TOKEN_EVENT, 0.0, key, message=text, step=step, item=item, attempt=attempt)


def test_the_printer_starts_a_prefixed_line_whenever_another_item_speaks() -> None:
    out = io.StringIO()
    printer = TokenPrinter(out)
    for event in (
        _token("search[0]", "search", 0, "Find"),
        _token("search[0]", "search", 0, " the"),
        _token("search[2]", "search", 2, " Some"),
        _token("search[0]", "search", 0, " papers\nand posts"),
        _token("review#2.coder", "review.coder", None, "code"),
        _token("search[2]", "search", 2, "again", attempt=2),
    ):
        printer.on_event(event)
    printer.close()
    assert out.getvalue().splitlines() == [
        "[search#0] Find the",
        "[search#2] Some",
        "[search#0] papers",
        "[search#0] and posts",
        "[review.coder] code",
        "[search#2] (attempt 2) again",
    ]


# --------------------------------------------------------------------------- a reader that falls behind


def token(key: str, text: str, attempt: int = 1) -> RunEvent:
    return RunEvent(TOKEN_EVENT, 0.0, key, message=text, step=key, attempt=attempt)


def test_past_its_limit_the_queue_merges_a_calls_tokens_and_still_queues_every_other_event() -> None:
    queue = EventQueue(limit=2)
    for event in (RunEvent("step_started", 0.0, "a"), token("a", "one "), token("a", "two ")):
        queue.put_nowait(event)  # up to the limit and one past it: all queued
    queue.put_nowait(token("a", "three "))  # past the limit: joins "two "
    queue.put_nowait(token("b", "bee"))  # no waiting token of b's: queued
    queue.put_nowait(token("a", "retry", attempt=2))  # another attempt is another call: queued
    queue.put_nowait(RunEvent("step_finished", 0.0, "a"))  # step events are always queued
    queue.put_nowait(token("b", "!"))
    assert queue.qsize() == 6
    read = [queue.get_nowait() for _ in range(6)]
    assert [(e.kind, e.key, e.message) for e in read] == [
        ("step_started", "a", None),
        (TOKEN_EVENT, "a", "one "),
        (TOKEN_EVENT, "a", "two three "),
        (TOKEN_EVENT, "b", "bee!"),
        (TOKEN_EVENT, "a", "retry"),
        ("step_finished", "a", None),
    ]
    assert queue.empty()
    queue.put_nowait(token("a", "after"))  # what was read is never written to again
    assert queue.get_nowait().message == "after" and read[2].message == "two three "


async def test_the_queues_reader_waits_for_the_next_event() -> None:
    queue = EventQueue()
    getter = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    assert not getter.done()
    queue.put_nowait(token("a", "x"))
    assert (await getter).message == "x"


async def test_a_reader_that_starts_late_gets_every_items_text_in_order_from_a_bounded_queue() -> None:
    spec = workflow('steps:\n  fan: {model: m, foreach: "{{ range(20) | list }}", prompt: "x {{ item }}"}\n')
    stream = Workflow(spec).stream(tokens=True, backend=ScriptedBackend(answer_words=200))
    events = [await stream.__anext__()]  # the run starts; nothing more is read until it has finished
    assert stream._task is not None
    await asyncio.wait_for(asyncio.shield(stream._task), 30)
    held = stream._queue.qsize()
    events += [event async for event in stream]
    result = stream.result
    assert result is not None and result.status.value == "succeeded"
    step_events = sum(1 for e in events if e.kind != TOKEN_EVENT)
    assert DEFAULT_LIMIT < held <= DEFAULT_LIMIT + 20 + step_events  # the limit, one token per item, steps
    tokens = tokens_by_key(events)
    assert sum(len(mine) for mine in tokens.values()) < 20 * 200  # the late tokens were merged
    kinds = [(e.kind, e.key) for e in events]
    for index in range(20):
        key = f"fan[{index}]"
        assert "".join(e.message or "" for e in tokens[key]) == result.records[key].output  # all of it, in order
        positions = [i for i, (kind, k) in enumerate(kinds) if k == key and kind == TOKEN_EVENT]
        assert kinds.index(("step_started", key)) < positions[0]
        assert positions[-1] < kinds.index(("step_finished", key))
