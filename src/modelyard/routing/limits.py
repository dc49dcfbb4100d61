"""Requests-per-minute and tokens-per-minute windows per deployment (in memory, per process).

A 60-slot ring of one-second buckets with a running sum: `headroom` and `record` are O(1) amortised.
Tokens are recorded from the pre-call estimate and corrected from the real usage afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

_SLOTS = 60


@dataclass(slots=True)
class MinuteWindow:
    """A sliding 60-second sum with one-second resolution."""

    buckets: list[int] = field(default_factory=lambda: [0] * _SLOTS)
    stamps: list[int] = field(default_factory=lambda: [-1] * _SLOTS)
    total: int = 0
    last_second: int = -1

    def _advance(self, second: int) -> None:
        if second <= self.last_second:
            return
        if second - self.last_second >= _SLOTS:
            self.buckets = [0] * _SLOTS
            self.stamps = [-1] * _SLOTS
            self.total = 0
        else:
            for s in range(self.last_second + 1, second + 1):
                slot = s % _SLOTS
                if self.stamps[slot] != s:
                    self.total -= self.buckets[slot]
                    self.buckets[slot] = 0
                    self.stamps[slot] = s
        self.last_second = second

    def value(self, now: float) -> int:
        second = int(now)
        if second != self.last_second:
            self._advance(second)
        return self.total

    def add(self, now: float, amount: int) -> None:
        second = int(now)
        self._advance(second)
        slot = second % _SLOTS
        self.stamps[slot] = second
        self.buckets[slot] += amount
        self.total += amount

    def correct(self, at: float, delta: int) -> None:
        """Adjust an earlier `add` (at time `at`) if its bucket is still in the window."""
        second = int(at)
        slot = second % _SLOTS
        if self.stamps[slot] == second:
            new = max(0, self.buckets[slot] + delta)
            self.total += new - self.buckets[slot]
            self.buckets[slot] = new


@dataclass(slots=True)
class DeploymentWindows:
    requests: MinuteWindow = field(default_factory=MinuteWindow)
    tokens: MinuteWindow = field(default_factory=MinuteWindow)


class DeploymentLimits:
    """RPM/TPM accounting for every deployment of this process."""

    def __init__(self) -> None:
        self._windows: dict[str, DeploymentWindows] = {}

    def headroom(self, name: str, now: float, rpm: int | None, tpm: int | None, tokens: int) -> str | None:
        """None when one more request of `tokens` fits, else the reason it does not."""
        windows = self._windows.get(name)
        if windows is None:
            return None
        if rpm is not None and windows.requests.value(now) + 1 > rpm:
            return f"rpm limit {rpm} reached"
        if tpm is not None:
            used = windows.tokens.value(now)
            if used + tokens > tpm and used > 0:
                return f"tpm limit {tpm} reached ({used} used, {tokens} needed)"
        return None

    def windows(self, name: str) -> DeploymentWindows:
        windows = self._windows.get(name)
        if windows is None:
            windows = self._windows[name] = DeploymentWindows()
        return windows

    def record(self, name: str, now: float, tokens: int) -> None:
        windows = self.windows(name)
        windows.requests.add(now, 1)
        windows.tokens.add(now, tokens)

    def correct_tokens(self, name: str, at: float, delta: int) -> None:
        self.windows(name).tokens.correct(at, delta)
