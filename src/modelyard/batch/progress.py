"""The batch's live progress on stderr: a bar redrawn at most ~8 times a second on a terminal, else one plain
line every few seconds (a log file or CI gets a readable trace, not a storm of redraws).

Rows done / total, failed, rows/s, cost so far, ETA and the projected total cost: spent / done x total once a
row is done, the planner's estimate x total before.
"""

from __future__ import annotations

import time
from typing import Protocol

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from modelyard.batch.budget import BudgetView
from modelyard.batch.model import RowResult

REFRESH_PER_S = 8
PLAIN_EVERY_S = 5.0


class ProgressSink(Protocol):
    """What the driver tells about progress; `start` once, `row` per finished row, `close` at the end."""

    def start(self, total: int, done_before: int, failed_before: int, planned_row_cost: float | None) -> None: ...

    def row(self, result: RowResult, budget: BudgetView) -> None: ...

    def close(self) -> None: ...


class NoProgress:
    def start(self, total: int, done_before: int, failed_before: int, planned_row_cost: float | None) -> None:
        pass

    def row(self, result: RowResult, budget: BudgetView) -> None:
        pass

    def close(self) -> None:
        pass


class ProgressState:
    """The counters the bar shows; cheap to update per row (the drawing happens elsewhere, rate-limited)."""

    def __init__(self) -> None:
        self.total = 0
        self.done = 0
        self.failed = 0
        self.session_done = 0
        self.spent = 0.0
        self.limit: float | None = None
        self.planned_row_cost: float | None = None
        self.started = time.perf_counter()

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.session_done / elapsed if elapsed > 0 and self.session_done else 0.0

    def eta_s(self) -> float | None:
        rate = self.rate()
        return (self.total - self.done) / rate if rate > 0 else None

    def projected_cost(self) -> float | None:
        if self.done:
            return self.spent / self.done * self.total
        if self.planned_row_cost is not None:
            return self.planned_row_cost * self.total
        return None

    def line(self) -> str:
        return f"rows {self.done:,}/{self.total:,}  failed {self.failed:,}  " + self.details()

    def details(self) -> str:
        parts = [
            f"{self.rate():.1f} rows/s",
            f"cost ${self.spent:.4f}" + (f" of ${self.limit:g}" if self.limit is not None else ""),
            f"ETA {_duration(self.eta_s())}",
        ]
        projected = self.projected_cost()
        parts.append(f"projected ${projected:.4f}" if projected is not None else "projected ?")
        return "  ".join(parts)


class BatchProgress:
    """Rich bar on a terminal (`Live`, auto-refreshed), plain lines otherwise."""

    def __init__(self, console: Console, *, enabled: bool = True, plain_every_s: float = PLAIN_EVERY_S) -> None:
        self.console = console
        self.enabled = enabled
        self.state = ProgressState()
        self.plain_every_s = plain_every_s
        self._live: Live | None = None
        self._last_plain = 0.0

    def start(self, total: int, done_before: int, failed_before: int, planned_row_cost: float | None) -> None:
        state = self.state
        state.total, state.done, state.failed, state.planned_row_cost = (
            total,
            done_before,
            failed_before,
            planned_row_cost,
        )
        state.started = time.perf_counter()
        if not self.enabled:
            return
        if self.console.is_terminal:
            self._live = Live(self, console=self.console, refresh_per_second=REFRESH_PER_S, transient=False)
            self._live.start()
        else:
            self._plain(force=True)

    def row(self, result: RowResult, budget: BudgetView) -> None:
        state = self.state
        state.done += 1
        state.session_done += 1
        state.failed += result.status != "succeeded"
        state.spent = budget.spent
        state.limit = budget.limit
        if self.enabled and self._live is None:
            self._plain()

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        elif self.enabled:
            self._plain(force=True)

    def _plain(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_plain >= self.plain_every_s:
            self._last_plain = now
            self.console.print(self.state.line(), highlight=False, markup=False, soft_wrap=True)

    def __rich__(self) -> RenderableType:
        """Drawn by Live's refresh thread, at most REFRESH_PER_S times a second; two short lines (80 columns)."""
        state = self.state
        share = state.done / state.total * 100 if state.total else 100.0
        top = Table.grid(padding=(0, 2))
        top.add_row(
            ProgressBar(total=max(1, state.total), completed=state.done, width=30),
            Text(f"{share:5.1f}%  rows {state.done:,}/{state.total:,}  failed {state.failed:,}"),
        )
        return Group(top, Text(state.details()))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
