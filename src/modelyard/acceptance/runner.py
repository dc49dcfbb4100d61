"""The runner: every case x every target x every repeat, in parallel with a bound, within a budget.

Jobs are ordered repeat-major, then case, then target, so a run the budget stops has asked every model the
same cases. A job first looks in the answer cache (a hit sends nothing and costs $0); otherwise it is
launched only if what is spent, plus what is in flight, plus its own estimate stays within `budget_usd`:
once one job does not fit, no further job is launched and the report says how many were skipped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from modelyard.acceptance.assertions import evaluate
from modelyard.acceptance.cache import AnswerCache, cache_key
from modelyard.acceptance.outcome import Answer, CaseRun, CheckResult
from modelyard.acceptance.request import case_body
from modelyard.acceptance.spec import CaseSpec, Suite
from modelyard.acceptance.targets import Target
from modelyard.schema.errors import ModelyardError

ProgressFn = Callable[[CaseRun], None]
#: Cosine similarity of two texts (the MiniLM embedder, for `similar`).
SimilarityFn = Callable[[str, str], float]


class Caller(Protocol):
    """Sends one chat body (its `model` already set) and prices it; the router in-process, or a fake."""

    #: The URL of a simulator the run started (normalised out of cache keys), if any.
    sim_url: str | None
    #: A digest of that simulator's fleet and answer keys (part of every cache key: a model's accuracy
    #: edited in the fleet file must miss the cache), if any.
    sim_digest: str | None

    async def complete(self, body: dict[str, Any]) -> Answer: ...

    def estimate_usd(self, body: dict[str, Any], target: Target) -> float: ...


@dataclass(slots=True)
class RunOptions:
    concurrency: int = 8
    repeat: int = 1
    budget_usd: float | None = None
    #: The model a `judge` assertion without its own `model:` asks (default: the suite's judge_model/route).
    judge_model: str | None = None


@dataclass(slots=True)
class RunResult:
    """Every case run, plus what the run as a whole spent and whether the budget stopped it."""

    runs: list[CaseRun]
    targets: list[Target]
    spent_usd: float = 0.0
    budget_usd: float | None = None
    budget_skipped: int = 0
    cache_hits: int = 0
    elapsed_s: float = 0.0
    judge_usd: float = 0.0


@dataclass(slots=True)
class _Job:
    target: Target
    task: str
    case: CaseSpec
    repeat: int
    body: dict[str, Any]
    key: str
    estimate: float


@dataclass
class _Ledger:
    """Money and the budget, touched only on the event loop's thread (no lock needed)."""

    budget: float | None
    spent: float = 0.0
    in_flight: float = 0.0
    stopped: bool = False
    skipped: int = 0
    judge: float = 0.0

    def admit(self, estimate: float) -> bool:
        if self.stopped:
            return False
        if self.budget is not None and self.spent + self.in_flight + estimate > self.budget:
            self.stopped = True
            return False
        self.in_flight += estimate
        return True


@dataclass
class Runner:
    """One run of a suite; `run()` once."""

    suite: Suite
    caller: Caller
    targets: list[Target]
    options: RunOptions = field(default_factory=RunOptions)
    cache: AnswerCache | None = None
    similarity: SimilarityFn | None = None
    on_progress: ProgressFn | None = None

    def __post_init__(self) -> None:
        self.ledger = _Ledger(self.options.budget_usd)

    def jobs(self) -> list[_Job]:
        jobs: list[_Job] = []
        for repeat in range(self.options.repeat):
            for task_name, task in self.suite.spec.tasks.items():
                for case in task.cases:
                    for target in self.targets:
                        body = case_body(case, task_name, target.name, repeat)
                        key = cache_key(body, target.name, self._fingerprint(target), repeat)
                        estimate = self.caller.estimate_usd(body, target)
                        if any(check.kind == "judge" for check in case.asserts):
                            estimate *= 2
                        jobs.append(_Job(target, task_name, case, repeat, body, key, estimate))
        return jobs

    def _fingerprint(self, target: Target) -> list[Any]:
        """What the target stands for, and, on a simulator, what that simulator answers (fleet, answer keys)."""
        caller = self.caller
        found = target.fingerprint(caller.sim_url)
        return [*found, ["simulator", caller.sim_digest]] if caller.sim_digest is not None else found

    async def run(self) -> RunResult:
        started = time.perf_counter()
        jobs = self.jobs()
        runs: list[CaseRun | None] = [None] * len(jobs)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(len(jobs)):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                runs[i] = await self._one(jobs[i])
                if self.on_progress is not None:
                    self.on_progress(runs[i])  # type: ignore[arg-type]

        workers = max(1, min(self.options.concurrency, len(jobs)))
        await asyncio.gather(*(worker() for _ in range(workers)))
        done = [run for run in runs if run is not None]
        return RunResult(
            runs=done,
            targets=self.targets,
            spent_usd=self.ledger.spent,
            budget_usd=self.options.budget_usd,
            budget_skipped=self.ledger.skipped,
            cache_hits=sum(1 for run in done if run.answer is not None and run.answer.cached),
            elapsed_s=time.perf_counter() - started,
            judge_usd=self.ledger.judge,
        )

    async def _one(self, job: _Job) -> CaseRun:
        run = CaseRun(job.target.name, job.task, job.case.id, job.repeat, "failed")
        answer = self.cache.get(job.key) if self.cache is not None else None
        if answer is None:
            if not self.ledger.admit(job.estimate):
                self.ledger.skipped += 1
                run.status = "skipped"
                run.error = "not run: the budget would be exceeded"
                return run
            try:
                answer = await self.caller.complete(job.body)
            except (ModelyardError, OSError, TimeoutError) as exc:
                run.status = "error"
                run.error = f"{type(exc).__name__}: {exc}"
                return run
            finally:
                self.ledger.in_flight -= job.estimate
            self.ledger.spent += answer.cost_usd
            if self.cache is not None:
                self.cache.put(job.key, answer)
        run.answer = answer
        run.checks = await self._checks(job, answer)
        run.status = "passed" if all(check.passed for check in run.checks) else "failed"
        return run

    async def _checks(self, job: _Job, answer: Answer) -> list[CheckResult]:
        context = {
            "case": job.case.id,
            "task": job.task,
            "model": job.target.name,
            "deployment": answer.deployment,
            "reference": job.case.reference,
            "repeat": job.repeat,
            "tool_calls": [{"name": c.name, "arguments": c.arguments} for c in answer.tool_calls],
        }
        results = []
        grader = _RunGrader(self, job.repeat)
        for check in job.case.asserts:
            try:
                result = await evaluate(check, answer, job.case, grader, self.suite.functions, context)
            except (ModelyardError, OSError, TimeoutError) as exc:
                result = CheckResult(check.kind, False, f"{type(exc).__name__}: {exc}")
            results.append(result)
        return results


class _RunGrader:
    """`similar` through the run's embedder; `judge` through the run's caller (cached, budgeted, counted)."""

    def __init__(self, runner: Runner, repeat: int = 0) -> None:
        self.runner = runner
        self.repeat = repeat

    async def similarity(self, a: str, b: str) -> float:
        if self.runner.similarity is None:
            raise ModelyardError("`similar` needs the embedder, which this run was not given")
        return await asyncio.to_thread(self.runner.similarity, a, b)

    async def judge(self, model: str | None, prompt: str) -> Answer:
        runner = self.runner
        spec = runner.suite.spec
        chosen = model or runner.options.judge_model or spec.judge_model or spec.route
        if chosen is None:
            raise ModelyardError("a `judge` assertion needs a model: `judge: {model: ...}` or `judge_model:`")
        body: dict[str, Any] = {
            "model": chosen,
            "messages": [{"role": "user", "content": prompt}],
            "seed": self.repeat,
            "temperature": 0,
            "modelyard": {"task": "judge"},
        }
        key = cache_key(
            body, chosen, ["judge", runner.caller.sim_url is not None, runner.caller.sim_digest], self.repeat
        )
        cached = runner.cache.get(key) if runner.cache is not None else None
        if cached is not None:
            return cached
        answer = await runner.caller.complete(body)
        runner.ledger.spent += answer.cost_usd
        runner.ledger.judge += answer.cost_usd
        if runner.cache is not None:
            runner.cache.put(key, answer)
        return answer
