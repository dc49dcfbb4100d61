"""Requests-per-minute and tokens-per-minute windows per deployment (in memory, per process).

Each window is state/windows.py's `SlidingWindow` (a 60-slot ring of one-second buckets with a running sum,
shared with the key limits of state/counters.py): `headroom` and `record` are O(1) amortised. Tokens are
recorded from the pre-call estimate and corrected from the real usage afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from modelyard.state.windows import SlidingWindow


@dataclass(slots=True)
class DeploymentWindows:
    requests: SlidingWindow = field(default_factory=SlidingWindow)
    tokens: SlidingWindow = field(default_factory=SlidingWindow)


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
