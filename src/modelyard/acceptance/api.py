"""One call that runs a suite end to end: environment, targets, cache, runner, report.

`modelyard accept` and `bench/accept_throughput.py` both go through `accept()`, so the bench measures
what the command does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from modelyard.acceptance.cache import DEFAULT_PATH, AnswerCache
from modelyard.acceptance.environment import minilm_similarity, open_environment
from modelyard.acceptance.report import Report, build_report
from modelyard.acceptance.runner import ProgressFn, Runner, RunOptions
from modelyard.acceptance.spec import Suite
from modelyard.acceptance.targets import resolve_targets


@dataclass(slots=True)
class AcceptOptions:
    """Everything `modelyard accept` takes besides the suite."""

    config: str | os.PathLike[str] | None = None
    models: list[str] | None = None
    run: RunOptions = field(default_factory=RunOptions)
    cache_path: str | os.PathLike[str] | None = DEFAULT_PATH
    timeout_s: float | None = None


def uses(suite: Suite, kind: str) -> bool:
    return any(
        check.kind == kind for task in suite.spec.tasks.values() for case in task.cases for check in case.asserts
    )


async def accept(
    suite: Suite,
    options: AcceptOptions,
    *,
    on_start: Callable[[int], None] | None = None,
    on_progress: ProgressFn | None = None,
) -> Report:
    """Run `suite` against its targets; `on_start(total case runs)` before the first is sent."""
    similarity = minilm_similarity() if uses(suite, "similar") else None  # missing model: fails before any call
    async with open_environment(suite, options.config, timeout_s=options.timeout_s) as env:
        targets = resolve_targets(env.config, suite.spec.route, options.models)
        with ExitStack() as stack:
            cache = None
            if options.cache_path is not None:
                cache = stack.enter_context(AnswerCache(Path(options.cache_path)))
            runner = Runner(suite, env.caller, targets, options.run, cache, similarity, on_progress)
            if on_start is not None:
                on_start(len(targets) * suite.case_count * options.run.repeat)
            result = await runner.run()
    return build_report(suite, result, options.run.repeat)
