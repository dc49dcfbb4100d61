"""What one check found: the unit that goes to the client's error, the `x-modelyard-guardrails` header,
`/metrics` and the spend log."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Finding:
    """The outcome of one check on one text (or, in a stream, on all of it so far).

    `fired` means the check's action applies; `error` means the check itself failed (it then fired when
    the spec fails closed, and did not when `on_error: allow`)."""

    label: str
    check: str
    stage: str
    action: str
    fired: bool
    elapsed_ms: float
    spans: int = 0
    kinds: tuple[str, ...] = ()
    error: str | None = None
    message: str = ""

    def header_part(self) -> str:
        """Compact form for `x-modelyard-guardrails`: `pii:output:redact fired 2 0.03ms`."""
        state = "error" if self.error is not None else ("fired" if self.fired else "pass")
        return f"{self.label}:{self.stage}:{self.action} {state} {self.spans} {self.elapsed_ms:.2f}ms"

    def merge(self, other: Finding) -> None:
        """Fold a later run of the same check into this one (streams check piece by piece)."""
        self.fired = self.fired or other.fired
        self.elapsed_ms += other.elapsed_ms
        self.spans += other.spans
        if other.kinds:
            self.kinds = tuple(dict.fromkeys((*self.kinds, *other.kinds)))
        if other.error is not None and self.error is None:
            self.error = other.error
        if other.message and not self.message:
            self.message = other.message


def header_value(findings: list[Finding]) -> str:
    """All findings of a request, comma-separated, for `x-modelyard-guardrails`."""
    return ", ".join(f.header_part() for f in findings)
