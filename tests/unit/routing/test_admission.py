"""The admission queue: requests wait for capacity instead of failing, in weighted fair order, shed early,
and never leak a slot or a bucket share (routing/admission.py)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import msgspec
import pytest

from modelyard.config.loader import parse_config
from modelyard.routing.admission import ClientLeftQueue, QueueTicket
from modelyard.routing.executor import Executor
from modelyard.routing.fair_queue import RATE_HORIZON_S, PoolQueue
from modelyard.routing.features import RequestFeatures
from modelyard.routing.router import Router
from modelyard.schema.chat import ChatRequest, UserMessage
from modelyard.schema.errors import GatewayError
from tests.unit.routing.test_executor import ok_body

CONFIG = """
deployments:
  - {name: one, provider: openai, model: m-one, api_base: "http://one/v1", price: {input: 1, output: 2},
     limits: {max_concurrency: 1}}
  - {name: paced, provider: openai, model: m-paced, api_base: "http://paced/v1", price: {input: 1, output: 2},
     limits: {rpm: 600, burst_s: 0.1}}
  - {name: cheap, provider: openai, model: m-cheap, api_base: "http://cheap/v1", price: {input: 0.1, output: 0.2}}
  - {name: free, provider: openai, model: m-free, api_base: "http://free/v1", price: {input: 1, output: 2}}
models:
  single: {candidates: [one]}
  rated: {candidates: [paced]}
  tiered:
    candidates: [one]
    fallbacks: [{model: cheap, when: saturated}]
  open: {candidates: [free]}
queue:
  max_wait_ms: 5000
"""


class GatedTransport:
    """Answers once its gate for the host opens (or at once for an ungated host); counts calls."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.gates: dict[str, asyncio.Event] = {}
        self.order: list[str] = []

    async def send(self, call: Any, timeouts: Any, adapter: Any) -> tuple[bytes, dict[str, str]]:
        host = call.url.split("//")[1].split("/")[0]
        self.calls[host] += 1
        body = msgspec.json.decode(call.body)
        self.order.append(body["messages"][0]["content"])
        gate = self.gates.get(host)
        if gate is not None:
            await gate.wait()
        return ok_body(f"m-{host}"), {}

    async def close(self) -> None:
        return None


def make() -> tuple[Router, GatedTransport]:
    router = Router(parse_config(CONFIG), seed=1)
    return router, through(router, GatedTransport())


def through(router: Router, transport: GatedTransport) -> GatedTransport:
    """Send the router's calls through `transport` (after `Router.start`, which makes its own)."""
    router._executor = Executor(
        transport=transport,  # type: ignore[arg-type]
        adapters=router.adapters,
        health=router.health,
        limits=router.limits,
        prices=router.table.prices,
        policy=router.policy,
    )
    return transport


def ask(model: str, text: str = "hello", tokens: int = 10) -> tuple[ChatRequest, dict[str, Any], RequestFeatures]:
    req = ChatRequest(model=model, messages=[UserMessage(content=text)])
    return req, msgspec.to_builtins(req), RequestFeatures(prompt_tokens=tokens, max_output_tokens=tokens)


def ticket(rank: int = 1, tenant: str = "k", wait_s: float = 5.0, gone: Any = None) -> QueueTicket:
    return QueueTicket(rank, tenant, wait_s, gone)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_request_waits_for_a_free_slot_instead_of_failing():
    router, transport = make()
    gate = transport.gates["one"] = asyncio.Event()
    first = asyncio.ensure_future(router.complete(*ask("single"), queue=ticket()))
    await settle()
    second = asyncio.ensure_future(router.complete(*ask("single"), queue=ticket()))
    await settle()
    assert router.admission.snapshot()["models"]["single"]["depth"] == 1
    assert transport.calls["one"] == 1  # the cap holds: the second waits, it is not sent
    gate.set()
    answers = await asyncio.gather(first, second)
    assert [a.deployment.name for a in answers] == ["one", "one"]
    assert answers[0].queue_ms == 0.0 and answers[1].queue_ms > 0.0
    assert router.health.get("one").in_flight == 0
    assert router.admission.snapshot()["models"]["single"]["depth"] == 0


async def test_without_a_ticket_a_saturated_model_still_fails_at_once():
    router, transport = make()
    transport.gates["one"] = asyncio.Event()
    first = asyncio.ensure_future(router.complete(*ask("single")))
    await settle()
    with pytest.raises(GatewayError) as err:
        await router.complete(*ask("single"))
    assert err.value.status == 503
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert router.health.get("one").in_flight == 0


async def test_classes_share_by_weight_and_keys_share_within_a_class():
    router, transport = make()
    gate = transport.gates["one"] = asyncio.Event()
    blocker = asyncio.ensure_future(router.complete(*ask("single", "blocker"), queue=ticket()))
    await settle()
    waiting = []
    # batch (weight 1): tenant "big" queues 6 calls before tenant "small" queues 2; interactive (weight 8): 4.
    for i in range(6):
        waiting.append(asyncio.ensure_future(router.complete(*ask("single", f"big-{i}"), queue=ticket(2, "big"))))
    for i in range(2):
        waiting.append(asyncio.ensure_future(router.complete(*ask("single", f"small-{i}"), queue=ticket(2, "small"))))
    for i in range(4):
        waiting.append(asyncio.ensure_future(router.complete(*ask("single", f"int-{i}"), queue=ticket(0, "i"))))
    await settle()
    assert router.admission.snapshot()["models"]["single"]["depth"] == 12

    async def drain() -> None:
        while transport.calls["one"] < 13:
            gate.set()
            await asyncio.sleep(0)
            gate.clear()
            await settle()

    await drain()
    gate.set()
    await asyncio.gather(blocker, *waiting)
    order = transport.order[1:]
    # Interactive (8x the weight) goes first, batch keys alternate: small's first call is not behind big's six.
    assert order[:4] == ["int-0", "int-1", "int-2", "int-3"], order
    batch = order[4:]
    assert batch.index("small-0") <= 1 and batch.index("small-1") <= 3, batch


async def test_weighted_shares_without_starvation():
    router, transport = make()
    gate = transport.gates["one"] = asyncio.Event()
    blocker = asyncio.ensure_future(router.complete(*ask("single", "blocker"), queue=ticket()))
    await settle()
    tasks = [
        asyncio.ensure_future(router.complete(*ask("single", f"{cls}-{i}"), queue=ticket(rank, cls, 30)))
        for i in range(30)
        for rank, cls in ((0, "interactive"), (2, "batch"))
    ]
    await settle()
    served: list[str] = []
    for _ in range(18):  # serve 18 of the 60 waiting, one at a time
        gate.set()
        await asyncio.sleep(0)
        gate.clear()
        await settle()
    served = [o.split("-")[0] for o in transport.order[1:]]
    counts = Counter(served[:16])
    # Weights 8:1 by tokens (equal sizes): about 8 interactive per batch call, and batch is not starved.
    assert counts["batch"] >= 1 and counts["interactive"] >= 12, counts
    gate.set()
    await asyncio.gather(blocker, *tasks)


async def test_rate_limited_model_is_paced_by_a_timer_not_refused():
    router, transport = make()
    # 600 RPM with a 0.1 s bucket: one call per 0.1 s; five calls take about 0.4 s, none refused.
    loop = asyncio.get_running_loop()
    started = loop.time()
    answers = await asyncio.gather(*(router.complete(*ask("rated"), queue=ticket()) for _ in range(5)))
    took = loop.time() - started
    assert transport.calls["paced"] == 5
    assert 0.3 <= took <= 1.5, took
    waits = sorted(a.queue_ms for a in answers)
    assert waits[0] == 0.0 and waits[-1] >= 300, waits


async def test_an_impossible_deadline_is_shed_at_once_with_retry_after():
    router, _transport = make()
    # 600 RPM paced: 50 queued calls need ~5 s; a request allowed to wait 0.5 s behind them is refused now.
    backlog = [asyncio.ensure_future(router.complete(*ask("rated"), queue=ticket(1, "a", 30))) for _ in range(50)]
    await settle()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(GatewayError) as err:
        await router.complete(*ask("rated"), queue=ticket(1, "a", 0.5))
    assert loop.time() - started < 0.1  # refused at once, not after waiting
    assert err.value.status == 429 and err.value.code == "queue_deadline"
    assert int(err.value.headers["Retry-After"]) >= 1
    for task in backlog:
        task.cancel()
    await asyncio.gather(*backlog, return_exceptions=True)
    assert router.admission.snapshot()["models"]["rated"]["depth"] == 0


async def test_a_full_queue_and_a_full_key_are_refused():
    router, transport = make()
    router.admission.settings.max_per_key = 2
    transport.gates["one"] = asyncio.Event()
    blocker = asyncio.ensure_future(router.complete(*ask("single"), queue=ticket()))
    await settle()
    waiting = [asyncio.ensure_future(router.complete(*ask("single"), queue=ticket(1, "greedy"))) for _ in range(2)]
    await settle()
    with pytest.raises(GatewayError) as err:
        await router.complete(*ask("single"), queue=ticket(1, "greedy"))
    assert err.value.status == 429 and err.value.code == "queue_full" and "this key" in err.value.message
    other = asyncio.ensure_future(router.complete(*ask("single"), queue=ticket(1, "other")))  # another key may
    await settle()
    assert router.admission.snapshot()["models"]["single"]["depth"] == 3
    transport.gates["one"].set()
    await asyncio.gather(blocker, other, *waiting)


async def test_a_client_that_leaves_is_removed_and_its_grant_never_leaks():
    router, transport = make()
    gate = transport.gates["one"] = asyncio.Event()
    blocker = asyncio.ensure_future(router.complete(*ask("single"), queue=ticket()))
    await settle()
    left = asyncio.Event()

    async def gone() -> None:
        await left.wait()
        raise ClientLeftQueue("gone")

    leaving = asyncio.ensure_future(router.complete(*ask("single"), queue=ticket(gone=gone)))
    await settle()
    assert router.admission.snapshot()["models"]["single"]["depth"] == 1
    left.set()
    with pytest.raises(ClientLeftQueue):
        await leaving
    assert router.admission.snapshot()["models"]["single"]["depth"] == 0
    # A request cancelled in the instant between its grant and its first attempt gives the grant back.
    granted_then_cancelled = asyncio.ensure_future(router.complete(*ask("single"), queue=ticket()))
    await settle()
    gate.set()
    await blocker
    granted_then_cancelled.cancel()
    await asyncio.gather(granted_then_cancelled, return_exceptions=True)
    await settle()
    assert router.health.get("one").in_flight == 0
    assert transport.calls["one"] in (1, 2)


async def test_a_waiter_whose_deadline_passes_gets_429_and_leaves():
    router, transport = make()
    transport.gates["one"] = asyncio.Event()
    blocker = asyncio.ensure_future(router.complete(*ask("single"), queue=ticket()))
    await settle()
    with pytest.raises(GatewayError) as err:
        await router.complete(*ask("single"), queue=ticket(wait_s=0.05))
    assert err.value.status == 429 and err.value.code == "queue_timeout"
    assert router.admission.snapshot()["models"]["single"]["depth"] == 0
    transport.gates["one"].set()
    await blocker


async def test_batch_goes_to_the_saturation_tier_instead_of_waiting():
    router, transport = make()
    transport.gates["one"] = asyncio.Event()
    blocker = asyncio.ensure_future(router.complete(*ask("tiered"), queue=ticket()))
    await settle()
    batch = await router.complete(*ask("tiered"), queue=ticket(rank=2))  # batch: fallback_when_saturated
    assert batch.deployment.name == "cheap" and batch.queue_ms == 0.0
    default = asyncio.ensure_future(router.complete(*ask("tiered"), queue=ticket(rank=1)))
    await settle()
    # `tiered` shares its deployment with `single`: one queue (named after the first model over it).
    snapshot = router.admission.snapshot()["models"]["single"]
    assert snapshot["depth"] == 1 and "tiered" in snapshot["serves"]  # default waits for its own model
    transport.gates["one"].set()
    assert (await default).deployment.name == "one"
    await blocker


async def test_unsaturated_models_never_touch_the_queue():
    router, _transport = make()
    answers = await asyncio.gather(*(router.complete(*ask("open"), queue=ticket()) for _ in range(20)))
    assert all(a.queue_ms == 0.0 for a in answers)
    assert router.admission.snapshot()["models"] == {}


async def test_another_name_of_the_same_deployment_is_not_a_way_around_the_order():
    """Found by the attacker: each model name had its own queue, so a batch tenant queueing on the bare
    deployment name (`one`) went before interactive requests queued on `single`. One pool, one order."""
    router, transport = make()
    gate = transport.gates["one"] = asyncio.Event()
    blocker = asyncio.ensure_future(router.complete(*ask("single", "blocker"), queue=ticket()))
    await settle()
    batch = [
        asyncio.ensure_future(router.complete(*ask(name, f"batch-{i}"), queue=ticket(2, "b")))
        for i, name in enumerate(["one", "single", "one", "one"])
    ]
    await settle()
    urgent = asyncio.ensure_future(router.complete(*ask("single", "urgent"), queue=ticket(0, "i")))
    await settle()
    assert router.admission.snapshot()["models"]["single"]["depth"] == 5
    for _ in range(3):
        gate.set()
        await asyncio.sleep(0)
        gate.clear()
        await settle()
    gate.set()
    await asyncio.gather(blocker, urgent, *batch)
    assert transport.order.index("urgent") <= 2, transport.order  # at most one batch call before it


async def test_a_queue_idle_for_a_while_does_not_shed_on_a_stale_rate():
    """Found by the attacker: the observed dispatch rate decayed to ~0 while the queue was idle, so the next
    request to wait was shed with an absurd expected wait, and every one after it (nothing fed the rate)."""
    router, transport = make()
    clock = [1000.0]
    router.admission.clock = lambda: clock[0]
    gate = transport.gates["one"] = asyncio.Event()
    blocker = asyncio.ensure_future(router.complete(*ask("single"), queue=ticket()))
    await settle()
    second = asyncio.ensure_future(router.complete(*ask("single"), queue=ticket()))
    await settle()
    clock[0] += 2.0
    gate.set()
    await asyncio.gather(blocker, second)
    gate.clear()
    clock[0] += 600.0  # ten minutes of nothing
    blocker = asyncio.ensure_future(router.complete(*ask("single"), queue=ticket()))
    await settle()
    waiting = asyncio.ensure_future(router.complete(*ask("single"), queue=ticket(wait_s=5.0)))
    await settle()
    assert not waiting.done(), waiting  # it waits (no 429 from a stale estimate)
    gate.set()
    await asyncio.gather(blocker, waiting)


async def test_a_timeout_that_leaves_no_time_for_the_call_is_refused_before_it_waits():
    """Found by the benchmark: a waiter dispatched just before its x-modelyard-timeout-ms was paid for by the
    provider and then timed out. The queue keeps the call's observed latency back from the wait."""
    router, transport = make()
    router.health.on_start("one", 0.0)
    router.health.on_success("one", 0.0, 400.0, 100.0)  # calls to `one` take ~400 ms
    transport.gates["one"] = asyncio.Event()
    blocker = asyncio.ensure_future(router.complete(*ask("single"), queue=ticket()))
    await settle()
    with pytest.raises(GatewayError) as err:
        await router.complete(*ask("single"), queue=QueueTicket(1, "k", 0.3, None, call_s=0.3))
    assert err.value.status == 429 and err.value.code == "queue_deadline"
    waiting = asyncio.ensure_future(router.complete(*ask("single"), queue=QueueTicket(1, "k", 2.0, None, call_s=2.0)))
    await settle()
    assert not waiting.done()  # 2 s leave room for the call: it waits
    transport.gates["one"].set()
    await asyncio.gather(blocker, waiting)


async def test_a_class_alone_is_expected_to_get_the_whole_capacity():
    """Found by the e2e tests: a lone batch tenant was shed as if it got 1/12 of the capacity (its weight
    share) with no other class waiting; weighted max-min fair sharing gives it all of it."""
    router, _ = make()
    admission = router.admission
    features = ask("rated")[2]
    plan = router.plan("rated", features)
    tokens = features.prompt_tokens + features.output_estimate()
    queue = admission._queues.setdefault("rated", PoolQueue("rated", admission.settings))
    batch, interactive = queue.classes[2], queue.classes[0]
    now = 100.0
    total = admission._service_rate(queue, plan, tokens, now)
    assert total is not None and queue.class_rate(batch, total, now, strict=False) == pytest.approx(total)
    interactive.rate.add(now, 0.25 * total * RATE_HORIZON_S)  # a quarter over the last 5 s: batch gets the rest
    interactive.rate.first = now - 10.0
    assert queue.class_rate(batch, total, now, strict=False) == pytest.approx(total * 0.75, rel=0.05)
