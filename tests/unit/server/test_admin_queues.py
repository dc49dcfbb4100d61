"""The operator's side of the admission queue: a key's priority settings checked by the admin API (and the
CLI, which shares `key_options`) and made effective through `KeyState`/`QueuePolicy`; the queue's metrics."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelyard.config.model import Config, Deployment, Limits, ModelGroup, Price, QueueSettings
from modelyard.routing.admission import QueueTicket
from modelyard.routing.features import RequestFeatures
from modelyard.routing.router import Router
from modelyard.schema.errors import GatewayError
from modelyard.server.access import KeyState
from modelyard.server.admin import class_names, key_options
from modelyard.server.metrics import Metrics
from modelyard.server.priority import QueuePolicy
from modelyard.state.keys import new_key

CLASSES = class_names(QueueSettings())  # interactive, default, batch


def options(**body: Any) -> dict[str, Any]:
    return key_options(body, 1_000.0, CLASSES)


def refused(**body: Any) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        options(**body)
    assert caught.value.status == 400
    return caught.value


# --------------------------------------------------------------------------- the admin API's checks


def test_top_level_queue_fields_are_stored_in_metadata() -> None:
    made = options(priority=" batch ", max_priority="default", max_queue_ms=2500, metadata={"team": "a"})
    assert made["metadata"] == {"team": "a", "priority": "batch", "max_priority": "default", "max_queue_ms": "2500"}
    assert options(max_queue_ms=12.5)["metadata"] == {"max_queue_ms": "12.5"}
    assert options(max_queue_ms=3_600_000)["metadata"] == {"max_queue_ms": "3600000"}
    assert options(priority=None, max_queue_ms=None)["metadata"] == {}  # null: absent (the CLI sends it)


def test_the_same_names_inside_metadata_are_checked_and_the_top_level_wins() -> None:
    made = options(metadata={"priority": "interactive", "max_queue_ms": "750"})
    assert made["metadata"] == {"priority": "interactive", "max_queue_ms": "750"}
    made = options(priority="batch", max_queue_ms=10, metadata={"priority": "nope", "max_queue_ms": "x"})
    assert made["metadata"] == {"priority": "batch", "max_queue_ms": "10"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"priority": "urgent"}, "priority"),
        ({"priority": ""}, "priority"),
        ({"priority": 1}, "priority"),
        ({"priority": ["batch"]}, "priority"),
        ({"max_priority": "root"}, "max_priority"),
        ({"max_priority": True}, "max_priority"),
        ({"metadata": {"priority": "urgent"}}, "metadata.priority"),
        ({"metadata": {"max_priority": "Batch"}}, "metadata.max_priority"),
        ({"max_queue_ms": 0}, "max_queue_ms"),
        ({"max_queue_ms": -5}, "max_queue_ms"),
        ({"max_queue_ms": 3_600_001}, "max_queue_ms"),
        ({"max_queue_ms": float("nan")}, "max_queue_ms"),
        ({"max_queue_ms": float("inf")}, "max_queue_ms"),
        ({"max_queue_ms": 10**400}, "max_queue_ms"),
        ({"max_queue_ms": True}, "max_queue_ms"),
        ({"max_queue_ms": "soon"}, "max_queue_ms"),
        ({"max_queue_ms": "nan"}, "max_queue_ms"),
        ({"max_queue_ms": [100]}, "max_queue_ms"),
        ({"metadata": {"max_queue_ms": "inf"}}, "metadata.max_queue_ms"),
        ({"metadata": {"max_queue_ms": "0"}}, "metadata.max_queue_ms"),
        ({"metadata": {"max_queue_ms": ""}}, "metadata.max_queue_ms"),
        ({"metadata": {"max_queue_ms": "1e400"}}, "metadata.max_queue_ms"),
    ],
)
def test_each_bad_value_is_a_400_naming_its_param(body: dict[str, Any], param: str) -> None:
    error = refused(**body)
    assert error.param == param
    if "priority" in param and "urgent" in str(body):
        assert "interactive, default, batch" in error.message  # the known classes, in the config's order


def test_class_names_come_from_the_config() -> None:
    classes = ["gold", "silver"]
    assert key_options({"priority": "gold"}, 0.0, classes)["metadata"] == {"priority": "gold"}
    with pytest.raises(GatewayError) as caught:
        key_options({"priority": "batch"}, 0.0, classes)
    assert caught.value.param == "priority" and "gold, silver" in caught.value.message


# --------------------------------------------------------------------------- effective on requests


class FakeRequest:
    def __init__(self, priority: str | None = None) -> None:
        self.priority = priority

    def header(self, name: bytes) -> str | None:
        return self.priority if name == b"x-modelyard-priority" else None

    async def gone(self) -> None:
        await asyncio.Event().wait()


def ticket(key: KeyState, asked: str | None = None) -> QueueTicket:
    return QueuePolicy(QueueSettings()).ticket(FakeRequest(asked), key, None, None)  # type: ignore[arg-type]


def test_stored_settings_set_the_class_the_cap_and_the_wait() -> None:
    made = options(priority="batch", max_priority="default", max_queue_ms=1500)
    _, record = new_key("tenant", **made)
    key = KeyState.from_record(record)
    assert (key.priority, key.max_priority, key.max_queue_s) == ("batch", "default", 1.5)
    assert ticket(key).rank == CLASSES.index("batch")
    assert ticket(key, "default").rank == CLASSES.index("default")
    assert ticket(key, "interactive").rank == CLASSES.index("default")  # capped by max_priority
    assert ticket(key).max_wait_s == 1.5


def test_a_class_the_config_no_longer_has_counts_as_the_lowest() -> None:
    """Found by the attacker: a `batch` key became `default` once `batch` was renamed (an unknown class fell
    back to the default class); an unknown name may never promote a key."""
    _, record = new_key("tenant", metadata={"priority": "bulk", "max_priority": "bulk"})
    key = KeyState.from_record(record)
    assert ticket(key).rank == len(CLASSES) - 1
    assert ticket(key, "interactive").rank == len(CLASSES) - 1


def test_a_priority_above_its_own_maximum_is_refused() -> None:
    with pytest.raises(GatewayError) as err:
        options(priority="interactive", max_priority="batch")
    assert err.value.status == 400 and err.value.param == "priority"
    assert options(priority="batch", max_priority="interactive")["metadata"]["max_priority"] == "interactive"


# --------------------------------------------------------------------------- metrics


def scrape(metrics: Metrics) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}


def samples(families: dict[str, Any], family: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for s in families[family].samples if s.name == name}


def limited_router() -> Router:
    dep = Deployment(
        name="one", provider="openai", model="m", price=Price(input=1, output=1), limits=Limits(max_concurrency=1)
    )
    return Router(Config(deployments=[dep], models={"smart": ModelGroup(candidates=["one"])}))


def test_the_router_reports_to_the_metrics_and_stops_when_they_close() -> None:
    router = limited_router()
    metrics = Metrics(router)
    assert router.admission.listener is metrics
    asyncio.run(metrics.close())
    assert router.admission.listener is None


def test_listener_calls_become_bounded_series() -> None:
    metrics = Metrics(limited_router())
    metrics.on_dispatch("smart", "interactive", 0.02)
    metrics.on_dispatch("smart", "interactive", 4.0)
    metrics.on_shed("smart", "batch", "deadline")
    metrics.on_shed("smart", "batch", "deadline")
    metrics.on_shed("unknown-model", "weird-class", "made-up")  # never a new label value from outside the config
    f = scrape(metrics)
    wait = "modelyard_queue_wait_seconds"
    counts = samples(f, wait, wait + "_count")
    assert counts == {(("class", "interactive"), ("model", "smart")): 2}
    buckets = {s.labels["le"]: s.value for s in f[wait].samples if s.name == wait + "_bucket"}
    assert buckets["0.025"] == 1 and buckets["5.0"] == 2 and buckets["3600.0"] == 2
    sheds = samples(f, "modelyard_queue_shed", "modelyard_queue_shed_total")
    assert sheds == {
        (("class", "batch"), ("model", "smart"), ("reason", "deadline")): 2,
        (("class", "other"), ("model", "other"), ("reason", "other")): 1,
    }


def test_a_real_queue_shows_its_depth_its_dispatch_and_its_timeout() -> None:
    router = limited_router()
    metrics = Metrics(router)
    admission = router.admission
    features = RequestFeatures(prompt_tokens=10)

    async def run() -> dict[str, Any]:
        plan = router.plan("smart", features)
        router.health.on_start("one", admission.clock())  # the one slot is busy: requests queue
        replan = router.replanner(features)
        waiting = asyncio.ensure_future(admission.wait(plan, 10, QueueTicket(0, "k1", 5.0), replan))
        late = asyncio.ensure_future(admission.wait(plan, 10, QueueTicket(2, "k2", 0.05), replan))
        await asyncio.sleep(0.01)
        during = scrape(metrics)
        with pytest.raises(GatewayError) as caught:
            await late  # the batch request's 50 ms run out
        assert caught.value.status == 429
        router.health.on_success("one", admission.clock(), 1.0)  # the slot frees: the interactive one goes
        admitted = await asyncio.wait_for(waiting, 1.0)
        assert admitted.grant is not None
        admission.release(admitted.grant)
        return during

    during = asyncio.run(run())
    depth = samples(during, "modelyard_queue_depth", "modelyard_queue_depth")
    assert depth[(("class", "interactive"), ("model", "smart"))] == 1
    assert depth[(("class", "batch"), ("model", "smart"))] == 1
    assert depth[(("class", "default"), ("model", "smart"))] == 0
    after = scrape(metrics)
    assert (
        samples(after, "modelyard_queue_depth", "modelyard_queue_depth")[(("class", "interactive"), ("model", "smart"))]
        == 0
    )
    wait = "modelyard_queue_wait_seconds"
    assert samples(after, wait, wait + "_count") == {(("class", "interactive"), ("model", "smart")): 1}
    sheds = samples(after, "modelyard_queue_shed", "modelyard_queue_shed_total")
    assert sheds == {(("class", "batch"), ("model", "smart"), ("reason", "timeout")): 1}


def test_a_queue_off_everywhere_gives_no_ticket_and_a_model_can_turn_it_on() -> None:
    from modelyard.config.model import ModelGroup, ModelQueue

    off = QueueSettings(enabled=False)
    request: Any = FakeRequest()
    assert QueuePolicy(off).ticket(request, None, None, None) is None
    one_on = {"m": ModelGroup(candidates=["d"], queue=ModelQueue(enabled=True))}
    made = QueuePolicy(off, one_on).ticket(request, None, None, None)
    assert made is not None and made.rank == CLASSES.index("default")
