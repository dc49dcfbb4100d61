"""`--engine ray`: rows run by async Ray actors across a cluster, each with its own backend and store connection.

Why actors and not one Ray task per row: a task pays Ray's scheduling and a fresh backend per row, while an
actor keeps one event loop, one `RowRunner`, one backend (its router or HTTP pool) and one store connection
for the whole batch, and runs many rows at once on them (docs/batch.md has the measured numbers). The driver
hands each actor small chunks of rows; the actor streams every row's result back as it finishes (a Ray
streaming generator), after committing it to the store, so progress moves row by row.

A worker or a node that dies: the rows it held and had not reported are looked up in the store. Those with a
stored result are reported from there; the rest are sent to a live actor with their checkpointed steps as
`RowTask.prior`. No row is reported twice and no finished step is called again; the upstream calls repeated
are at most the dead worker's calls in flight. Dead actors are replaced while the cluster has a free CPU for
one; a node gone for good leaves fewer actors, never a hang. Ray is imported only inside this module's
functions (`modelyard[ray]`).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from modelyard.batch.engine import RowEngine, cancel_all
from modelyard.batch.model import BackendRef, BatchHeader, RowResult, RowTask
from modelyard.batch.runner import MAX_ERROR_CHARS, RowRunner
from modelyard.batch.store import BatchStore, open_batch_store
from modelyard.schema.errors import ModelyardError

#: Rows one actor call carries at most (small: a dead worker loses little, and rows spread evenly).
DEFAULT_CHUNK = 8
#: How long an actor may take to start (build its backend, open the store) before the batch gives up on it.
SETUP_TIMEOUT_S = 120.0
#: How many times one row is sent again after its worker failed without dying (a bug, not a lost node).
MAX_RESENDS = 3
#: The environment every Ray process of a batch gets: no usage statistics are ever sent.
WORKER_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}
_POSTGRES = ("postgresql://", "postgres://")

log = logging.getLogger(__name__)


class BatchEngineError(ModelyardError, RuntimeError):
    """An engine that cannot start (Ray missing, no cluster at the address, a store the workers cannot share)."""


def import_ray() -> Any:
    """Ray, or the install hint (it is an optional extra)."""
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise BatchEngineError("--engine ray needs Ray: pip install 'modelyard[ray]'") from None


# --------------------------------------------------------------------------- the worker (a Ray actor)


class RowWorker:
    """One worker process: an event loop running many rows at once over one `RowRunner`.

    Plain class here; `open_ray_engine` makes it a Ray actor (`ray.remote`), so this module imports without Ray.
    """

    def __init__(
        self, header: BatchHeader, store_location: str, backend: BackendRef, priority: str | None = "batch"
    ) -> None:
        self.header = header
        self.store_location = store_location
        self.backend_ref = backend
        self.priority = priority
        self.runner: RowRunner | None = None
        self._stack = AsyncExitStack()

    async def setup(self) -> dict[str, Any]:
        """Parse the workflow, open the store and the backend; who and where this worker is."""
        from modelyard.workflows.api import Workflow
        from modelyard.workflows.backend import load_backend_factory

        workflow = Workflow.from_string(self.header.text, self.header.source or self.header.workflow)
        store = open_batch_store(self.store_location)
        self._stack.callback(store.close)
        ref = self.backend_ref
        backend = await self._stack.enter_async_context(load_backend_factory(ref.factory)(ref.config, ref.gateway_url))
        self.runner = RowRunner(workflow, backend, store, self.header.batch_id, priority=self.priority)
        return {"worker": self.runner.worker, "pid": os.getpid(), "node": _node_id()}

    async def run_rows(self, tasks: list[RowTask]) -> AsyncIterator[RowResult]:
        """Run a chunk of rows at once; yield each result once it is committed to the store (durable first)."""
        runner = self.runner
        if runner is None:
            raise RuntimeError("RowWorker.setup was not called")
        pending = {asyncio.ensure_future(runner.run(task)) for task in tasks}
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                runner.store.flush()  # one commit for every row that finished this turn, before they are reported
                for finished in done:
                    yield finished.result()
        finally:
            for task in pending:
                task.cancel()

    async def aclose(self) -> None:
        await self._stack.aclose()


def _node_id() -> str | None:
    try:
        return str(import_ray().get_runtime_context().get_node_id())
    except Exception:  # outside Ray (a unit test of the class)
        return None


# --------------------------------------------------------------------------- the driver's side


@dataclass(eq=False)
class Worker:
    """A live actor as the driver sees it: its handle, identity and the rows it holds unreported."""

    handle: Any
    worker: str
    pid: int
    node: str | None
    rows: set[int] = field(default_factory=set)


@dataclass
class Death:
    """A worker the batch lost, and what became of the rows it held (for the report and the tests)."""

    worker: str
    pid: int
    node: str | None
    #: Rows it held and had not reported when it died (its calls in flight are among these rows').
    rows: list[int]
    #: Of those: found finished in the store (reported from there), and sent to another worker.
    recovered: int = 0
    resent: int = 0
    error: str = ""


@dataclass
class _Event:
    worker: Worker
    result: RowResult | None = None
    #: A stream that ended early: the rows it had not reported, and why.
    lost: list[RowTask] | None = None
    error: BaseException | None = None


class RayEngine:
    """The `RowEngine` over Ray actors (see the module's docstring)."""

    name = "ray"

    def __init__(
        self,
        ray: Any,
        workers: list[Worker],
        store: BatchStore,
        batch_id: str,
        *,
        chunk: int = DEFAULT_CHUNK,
        spawn: Callable[[], Any] | None = None,
    ) -> None:
        self.ray = ray
        self.workers = workers
        self.store = store
        self.batch_id = batch_id
        self.chunk = max(1, chunk)
        self.spawn = spawn
        self.deaths: list[Death] = []
        self._events: deque[_Event] = deque()
        self._wake = asyncio.Event()
        self._streams: set[asyncio.Task[None]] = set()
        self._spawning: set[asyncio.Task[None]] = set()
        self._resends: dict[int, int] = {}

    async def run(self, tasks: AsyncIterator[RowTask], concurrency: int) -> AsyncIterator[RowResult]:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        held: dict[int, RowTask] = {}  # pulled and not yet yielded: what counts against `concurrency`
        queue: deque[RowTask] = deque()  # pulled (or lost by a dead worker), not yet sent to a worker
        pull: asyncio.Task[RowTask | None] | None = None
        exhausted = False
        try:
            while True:
                if pull is None and not exhausted and len(held) < concurrency:
                    pull = asyncio.ensure_future(_pull(tasks))
                    pull.add_done_callback(lambda _: self._wake.set())
                if pull is not None and not pull.done() and queue and len(queue) < self.chunk:
                    await asyncio.sleep(0)  # a feed that answers at once fills the chunk before it is sent
                if pull is not None and pull.done():
                    task, pull = pull.result(), None
                    if task is None:
                        exhausted = True
                    else:
                        held[task.row] = task
                        queue.append(task)
                    continue
                self._send(queue)  # nothing more comes at once: send what is queued
                while self._events:
                    for result in self._settle(self._events.popleft(), held, queue):
                        yield result
                if exhausted and not held:
                    return
                self._wake.clear()
                if self._events or (pull is not None and pull.done()) or (queue and self.workers):
                    continue  # (rows a dead worker lost are queued again: send them now)
                if pull is None and not exhausted and len(held) < concurrency:
                    continue  # rows were settled from the store: room to pull again
                if queue and not self.workers:
                    await self._no_workers()
                    continue
                await self._wake.wait()
        finally:
            await self._stop(pull)

    def _send(self, queue: deque[RowTask]) -> None:
        """Send queued rows in chunks of at most `chunk` to the least busy workers."""
        while queue and self.workers:
            chunk = [queue.popleft() for _ in range(min(self.chunk, len(queue)))]
            worker = min(self.workers, key=lambda w: len(w.rows))
            worker.rows.update(task.row for task in chunk)
            stream = worker.handle.run_rows.options(num_returns="streaming").remote(chunk)
            consumer = asyncio.ensure_future(self._consume(worker, chunk, stream))
            self._streams.add(consumer)
            consumer.add_done_callback(self._streams.discard)

    async def _consume(self, worker: Worker, chunk: list[RowTask], stream: Any) -> None:
        """Read one chunk's results as they come; a stream that breaks reports the rows it did not deliver."""
        delivered: set[int] = set()
        try:
            async for ref in stream:
                result: RowResult = await ref
                delivered.add(result.row)
                self._events.append(_Event(worker, result=result))
                self._wake.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a dead actor or node (RayActorError), or a worker's bug (RayTaskError)
            lost = [task for task in chunk if task.row not in delivered]
            self._events.append(_Event(worker, lost=lost, error=exc))
            self._wake.set()

    def _settle(self, event: _Event, held: dict[int, RowTask], queue: deque[RowTask]) -> list[RowResult]:
        """What one event means for the rows: results to yield (each row once), rows to send again."""
        worker = event.worker
        if event.result is not None:
            worker.rows.discard(event.result.row)
            return [event.result] if held.pop(event.result.row, None) is not None else []
        lost = [task for task in event.lost or [] if task.row in held]
        worker.rows.difference_update(task.row for task in event.lost or [])
        dead = isinstance(event.error, self.ray.exceptions.RayActorError)
        if dead and worker in self.workers:
            self._bury(worker, event.error)
        death = next((d for d in self.deaths if d.pid == worker.pid), None) if dead else None
        if death is not None:
            death.rows.extend(task.row for task in lost)
        results = self._recover(lost, held, queue, event.error)
        if death is not None:
            death.recovered += len(results)
            death.resent += len(lost) - len(results)
        return results

    def _recover(
        self, lost: list[RowTask], held: dict[int, RowTask], queue: deque[RowTask], error: BaseException | None
    ) -> list[RowResult]:
        """Rows a worker did not report: stored ones are reported from the store, the rest queued again with
        their checkpointed steps. A row whose worker kept failing without dying is failed instead."""
        if not lost:
            return []
        rows = [task.row for task in lost]
        stored = self._stored_results(rows)
        steps = self.store.steps(self.batch_id, [row for row in rows if row not in stored])
        results: list[RowResult] = []
        for task in lost:
            if task.row in stored:
                results.append(stored[task.row])
                held.pop(task.row, None)
                continue
            tries = self._resends[task.row] = self._resends.get(task.row, 0) + 1
            if tries > MAX_RESENDS and not isinstance(error, self.ray.exceptions.RayActorError):
                results.append(self._give_up(task, error))
                held.pop(task.row, None)
                continue
            queue.appendleft(RowTask(task.row, task.inputs, prior=steps.get(task.row) or task.prior))
        return results

    def _stored_results(self, rows: Sequence[int]) -> dict[int, RowResult]:
        """The stored results of `rows` (a few: what one worker held), one indexed lookup each."""
        found: dict[int, RowResult] = {}
        for row in rows:
            page = self.store.results(self.batch_id, after=row - 1, limit=1)
            if page and page[0].row == row:
                found[row] = page[0]
        return found

    def _give_up(self, task: RowTask, error: BaseException | None) -> RowResult:
        text = f"Ray worker failed: {type(error).__name__}: {error}".replace("\n", "; ")[:MAX_ERROR_CHARS]
        result = RowResult(task.row, "failed", error=text, worker="ray")
        if not self.store.save_row(self.batch_id, result):  # a worker saved it after all: report that one
            stored = self._stored_results([task.row])
            result = stored.get(task.row, result)
        self.store.flush()
        return result

    def _bury(self, worker: Worker, error: BaseException | None) -> None:
        """Forget a dead worker, make sure it stays dead, and start a replacement if the cluster has room."""
        self.workers.remove(worker)
        self.deaths.append(Death(worker.worker, worker.pid, worker.node, [], error=f"{type(error).__name__}"))
        log.warning("ray worker %s (pid %s) died: %s", worker.worker, worker.pid, type(error).__name__)
        try:
            self.ray.kill(worker.handle, no_restart=True)
        except Exception:  # already gone
            pass
        if self.spawn is not None and self._free_cpus() >= 1:
            task = asyncio.ensure_future(self._replace())
            self._spawning.add(task)
            task.add_done_callback(self._spawning.discard)

    def _free_cpus(self) -> float:
        try:
            return float(self.ray.available_resources().get("CPU", 0.0))
        except Exception:
            return 0.0

    async def _replace(self) -> None:
        assert self.spawn is not None
        try:
            worker = await start_worker(self.ray, self.spawn(), SETUP_TIMEOUT_S)
        except Exception as exc:  # no room after all, or the node it went to died: carry on with fewer
            log.warning("no replacement ray worker: %s", exc)
            return
        self.workers.append(worker)
        self._wake.set()

    async def _no_workers(self) -> None:
        """Rows to send and no worker: wait for a replacement being started, else stop the batch."""
        if self._spawning:
            await asyncio.wait(set(self._spawning))
            return
        raise BatchEngineError(
            "every Ray worker of the batch is gone (nodes died and the cluster has no free CPU for new ones); "
            "the finished rows are saved: continue with `modelyard batch --resume BATCH_ID`"
        )

    async def _stop(self, pull: asyncio.Task[RowTask | None] | None) -> None:
        """Stop reading streams and feeding (a consumer that stopped, or Ctrl-C): unreported rows stay unfinished."""
        await cancel_all([*self._streams, *self._spawning, pull])

    async def aclose(self) -> None:
        """Let every worker close its backend and store, then end the actors."""
        workers, self.workers = list(self.workers), []
        closing = [w.handle.aclose.remote() for w in workers]
        if closing:
            await asyncio.wait([asyncio.ensure_future(_await(ref)) for ref in closing], timeout=10)
        for worker in workers:
            try:
                self.ray.kill(worker.handle, no_restart=True)
            except Exception:
                pass


async def _await(ref: Any) -> Any:
    try:
        return await ref
    except Exception:
        return None


async def _pull(tasks: AsyncIterator[RowTask]) -> RowTask | None:
    try:
        return await anext(tasks)
    except StopAsyncIteration:
        return None


async def start_worker(ray: Any, handle: Any, timeout_s: float) -> Worker:
    """Wait for a new actor's `setup`; an actor that cannot start in time is killed (no room, a bad config)."""
    try:
        info = await asyncio.wait_for(_setup(handle), timeout_s)
    except BaseException:
        ray.kill(handle, no_restart=True)
        raise
    return Worker(handle, str(info["worker"]), int(info["pid"]), info.get("node"))


async def _setup(handle: Any) -> dict[str, Any]:
    info: dict[str, Any] = await handle.setup.remote()
    return info


# --------------------------------------------------------------------------- the contract the CLI uses


@asynccontextmanager
async def open_ray_engine(
    header: BatchHeader,
    store_location: str,
    backend: BackendRef,
    *,
    address: str | None = None,
    priority: str = "batch",
    workers: int | None = None,
    num_cpus: int | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> AsyncIterator[RowEngine]:
    """A RowEngine on the Ray cluster at `address` (None: $RAY_ADDRESS, else a local Ray started here).

    Workers parse the workflow from `header.text`, open the store at `store_location` and build their backend
    from `backend`; a store the cluster's nodes cannot share (a SQLite file on a multi-node cluster) is refused.
    `workers`: actors to start (default: one per CPU of the cluster); `num_cpus`: a local Ray's CPUs (default:
    this machine's); `chunk`: rows per actor call at most.
    """
    ray = import_ray()
    if workers is not None and workers < 1:
        raise BatchEngineError(f"--ray-workers must be at least 1, not {workers}")
    started = _connect(ray, address or os.environ.get("RAY_ADDRESS") or None, num_cpus)
    engine: RayEngine | None = None
    store: BatchStore | None = None
    try:
        count = _check_cluster(ray, store_location, workers)
        actor = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(RowWorker)

        def spawn() -> Any:
            return actor.options(scheduling_strategy="SPREAD").remote(header, store_location, backend, priority)

        started_workers = await _start_workers(ray, [spawn() for _ in range(count)])
        store = open_batch_store(store_location)
        engine = RayEngine(ray, started_workers, store, header.batch_id, chunk=chunk, spawn=spawn)
        yield engine
    finally:
        try:
            if engine is not None:
                await engine.aclose()
            if store is not None:
                store.close()
        finally:
            if started:
                ray.shutdown()


def _connect(ray: Any, address: str | None, num_cpus: int | None) -> bool:
    """Join the cluster at `address`, or start a quiet local one on loopback; True when this call started Ray."""
    for name, value in WORKER_ENV.items():
        os.environ.setdefault(name, value)
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "log_to_driver": False,
        "runtime_env": {"env_vars": dict(WORKER_ENV)},  # env vars only: nothing is downloaded or uploaded
    }
    try:
        if address:
            ray.init(address=address, **options)
            return True
        options["runtime_env"] = {"env_vars": {**WORKER_ENV, **_caller_proxy_env()}}
        # its notice that a local Ray uses token authentication (it does: nothing to act on) is not printed
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        with _loopback_only(ray):
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, _node_ip_address="127.0.0.1", **options)
        return True
    except Exception as exc:
        where = f"at {address}" if address else "locally"
        raise BatchEngineError(f"cannot start or join a Ray cluster {where}: {exc}") from None


#: While a local Ray starts, its processes (they inherit the environment) send plain-HTTP requests to a closed
#: loopback port: the dashboard's usage module asks the clouds' metadata addresses (169.254.169.254,
#: metadata.google.internal) which cloud it runs on even with usage stats off. Ray's own traffic is loopback
#: gRPC and HTTP, exempted by NO_PROXY. The workers get the caller's values back (WORKER_PROXY_ENV).
_PROXY_ENV = {
    "http_proxy": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "no_proxy": "127.0.0.1,localhost,::1",
    "NO_PROXY": "127.0.0.1,localhost,::1",
}


@contextmanager
def _loopback_only(ray: Any) -> Iterator[None]:
    """On Linux Ray turns 127.0.0.1 into the machine's routable address and listens on every interface; as a
    single-node cluster (the switch Ray reads from $RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is imported) it
    keeps the node's address, and so every socket it listens on, on loopback. Its processes start with
    `_PROXY_ENV`, so no cloud-metadata probe leaves the machine. Both restored once Ray is up."""
    constants = ray._private.ray_constants
    saved = constants.ENABLE_RAY_CLUSTER
    saved_env = {name: os.environ.get(name) for name in _PROXY_ENV}
    constants.ENABLE_RAY_CLUSTER = False
    os.environ.update(_PROXY_ENV)
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = saved
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _caller_proxy_env() -> dict[str, str]:
    """The caller's own proxy settings for the workers ("" where it had none): the probe guard is not theirs."""
    return {name: os.environ.get(name, "") for name in _PROXY_ENV}


def _check_cluster(ray: Any, store_location: str, workers: int | None) -> int:
    """How many actors to start; refuses a SQLite store on several nodes and more workers than CPUs."""
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    if len(nodes) > 1 and not store_location.startswith(_POSTGRES):
        raise BatchEngineError(
            f"the Ray cluster has {len(nodes)} nodes and the batch store is a SQLite file ({store_location}) "
            "that only one machine can reach: use --store postgresql://..."
        )
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if cpus < 1:
        raise BatchEngineError("the Ray cluster has no CPU to run a worker on")
    if workers is not None and workers > cpus:
        raise BatchEngineError(f"--ray-workers {workers} is more than the cluster's {cpus} CPUs")
    return workers or cpus


async def _start_workers(ray: Any, handles: list[Any]) -> list[Worker]:
    """Every actor set up, or BatchEngineError with the first failure (a bad config, an unreachable store)."""
    results = await asyncio.gather(
        *(start_worker(ray, handle, SETUP_TIMEOUT_S) for handle in handles), return_exceptions=True
    )
    started = [r for r in results if isinstance(r, Worker)]
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        for worker in started:
            ray.kill(worker.handle, no_restart=True)
        error = failed[0]
        cause = getattr(error, "cause", None) or error
        raise BatchEngineError(f"a Ray worker could not start: {type(cause).__name__}: {cause}")
    return started


__all__ = ["BatchEngineError", "Death", "RayEngine", "RowWorker", "Worker", "open_ray_engine"]
