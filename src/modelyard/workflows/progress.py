"""Live progress while a run goes: one line per step with its state, model, calls, tokens, cost and time.

Driven by the engine's events (a listener, called on the event loop); the table is rebuilt at most ten
times a second, and only when the console is a terminal.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.live import Live
from rich.table import Table

from modelyard.workflows.keys import parent_key, top_key
from modelyard.workflows.records import RunEvent, StepRecord, StepState
from modelyard.workflows.spec import WorkflowSpec

_ICONS = {
    StepState.PENDING: "[dim]. pending[/dim]",
    StepState.RUNNING: "[cyan]> running[/cyan]",
    StepState.SUCCEEDED: "[green]ok[/green]",
    StepState.FAILED: "[red]failed[/red]",
    StepState.BLOCKED: "[red]blocked[/red]",
    StepState.SKIPPED: "[dim]skipped[/dim]",
    StepState.STOPPED: "[yellow]stopped[/yellow]",
    StepState.CANCELLED: "[yellow]cancelled[/yellow]",
}


class LiveProgress:
    """A context manager whose `on_event` is the engine's listener."""

    def __init__(self, spec: WorkflowSpec, console: Console, enabled: bool | None = None) -> None:
        self.spec = spec
        self.console = console
        self.enabled = console.is_terminal if enabled is None else enabled
        self.steps: dict[str, StepRecord] = {}
        self.done_items: dict[str, int] = {}
        self.started = time.monotonic()
        self._live: Live | None = None
        self._last = 0.0

    def __enter__(self) -> LiveProgress:
        if self.enabled:
            self._live = Live(self.table(), console=self.console, refresh_per_second=8, transient=True)
            self._live.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._live is not None:
            self._live.__exit__(exc_type, exc, tb)
            self._live = None

    def on_event(self, event: RunEvent) -> None:
        record = event.record
        if record is not None:
            top = top_key(record.key)
            if record.key == top:
                self.steps[top] = record
            elif (
                event.kind in ("step_finished", "step_cached")
                and record.key.endswith("]")
                and parent_key(record.key) == top
            ):
                self.done_items[top] = self.done_items.get(top, 0) + 1
        now = time.monotonic()
        if self._live is not None and (now - self._last > 0.1 or event.kind == "run_finished"):
            self._last = now
            self._live.update(self.table())

    def table(self) -> Table:
        table = Table(title=f"{self.spec.name}  {time.monotonic() - self.started:.1f}s", title_justify="left")
        for name in ("step", "state", "model", "calls", "tokens", "cost", "time"):
            table.add_column(name, justify="right" if name in ("calls", "tokens", "cost", "time") else "left")
        for sid in self.spec.steps:
            record = self.steps.get(sid)
            if record is None:
                model = self.spec.steps[sid].model or ""
                table.add_row(sid, _ICONS[StepState.PENDING], model, "", "", "", "")
                continue
            calls = f"{self.done_items.get(sid, 0)}/{record.items}" if record.kind == "foreach" else ""
            if record.kind == "loop" and record.iterations:
                calls = f"round {record.iterations}"
            now = time.time()
            elapsed = record.duration_s if record.finished_at else now - (record.started_at or now)
            table.add_row(
                sid,
                _ICONS.get(record.state, record.state.value),
                record.deployment or record.model or "",
                calls,
                f"{record.prompt_tokens + record.completion_tokens:,}" if record.finished_at else "",
                f"${record.cost_usd:.4f}" if record.finished_at else "",
                f"{elapsed:.1f}s",
            )
        return table
