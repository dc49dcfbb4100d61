"""Output checks on a streamed answer, piece by piece: the span checks (pii, secrets, regex, keywords) run on
the text not yet sent, and only the tail that a pending match could still cover is held back.

The tail is told per recogniser from the shape of its matches (guardrails.shape): a match that is not
finished yet must lie inside the trailing run of characters it can contain, and within its longest length
from the end. So "my card is 4111 1111 1111 1111. Thanks" holds back nothing after the full stop, and an
answer of prose holds back at most its last word. A match found before that tail is final: it is redacted
(or the stream is blocked) before a byte of it is released. Checks that need the whole answer (json_schema,
empty, truncated, max_length, python, unbounded regexes) are not run here: the server buffers the answer
for them (GuardSet.whole_answer) and calls check_output with skip_incremental=True.
"""

from __future__ import annotations

from modelyard.guardrails.checks import Span, SpanCheck
from modelyard.guardrails.compile import GuardSet
from modelyard.guardrails.findings import Finding
from modelyard.guardrails.run import redact, scan

#: Released characters kept in front of the pending text, so `\b` at its start sees its left neighbour.
CONTEXT_CHARS = 8
#: Scan again only once this many new characters have arrived: holding a few more characters is always safe,
#: and it keeps the cost per answer close to one scan of it (a delta is often a single token).
MIN_STEP = 32


class StreamGuard:
    """One per streamed answer. `feed` the text deltas in order, send what it returns, then `finish`."""

    def __init__(self, guards: GuardSet, *, min_step: int = MIN_STEP) -> None:
        self._min_step = min_step
        self._unscanned = 0
        self._checks = guards.span_checks
        self._buf = ""  # released context (self._ctx chars) + text not yet released, unredacted
        self._ctx = 0
        self._findings: dict[bytes, Finding] = {}
        self.blocked: Finding | None = None

    @property
    def findings(self) -> list[Finding]:
        """One finding per check, merged over the pieces (spans and time summed)."""
        return list(self._findings.values())

    @property
    def pending(self) -> int:
        """Characters received and not yet released."""
        return len(self._buf) - self._ctx

    def feed(self, text: str) -> str:
        """Text that is now safe to send (redacted), or "" (held back, or blocked)."""
        if self.blocked is not None:
            return ""
        self._buf += text
        if not self._checks:
            return self._release(len(self._buf), [])
        self._unscanned += len(text)
        if self._unscanned < self._min_step:
            return ""
        self._unscanned = 0
        return self._step(final=False)

    def finish(self) -> str:
        """The rest of the answer, checked; "" when blocked."""
        if self.blocked is not None or not self._checks:
            return "" if self.blocked is not None else self._release(len(self._buf), [])
        return self._step(final=True)

    def _step(self, *, final: bool) -> str:
        buf, pos = self._buf, self._ctx
        cut = len(buf)
        found: list[tuple[SpanCheck, Finding, list[Span]]] = []
        for check in self._checks:
            finding, spans = scan(check, buf, "output", pos)
            if not final and finding.error is None:
                try:
                    cut = min(cut, check.hold_from(buf, pos))
                except Exception:  # a failed hold: hold everything rather than guess
                    cut = pos
            found.append((check, finding, spans))
        if not final:
            cut = _not_inside(cut, [s for _, _, spans in found for s in spans])
        to_redact: list[tuple[SpanCheck, list[Span]]] = []
        for check, finding, spans in found:
            done = [s for s in spans if s.end <= cut]
            self._record(check, finding, done)
            if finding.error is not None and finding.fired:
                self.blocked = self.blocked or finding
            elif done and check.spec.action in ("block", "retry"):
                self.blocked = self.blocked or self._findings[check.key]
            elif done and check.spec.action == "redact":
                to_redact.append((check, done))
        if self.blocked is not None:
            return ""
        return self._release(cut, to_redact)

    def _record(self, check: SpanCheck, finding: Finding, done: list[Span]) -> None:
        if finding.error is None:
            finding.spans = len(done)
            finding.fired = bool(done)
            finding.kinds = tuple(dict.fromkeys(s.kind for s in done))
            finding.message = (
                f"{', '.join(finding.kinds)} found in the output (guardrail `{check.spec.label}`)" if done else ""
            )
        total = self._findings.get(check.key)
        if total is None:
            self._findings[check.key] = finding
        else:
            total.merge(finding)

    def _release(self, cut: int, to_redact: list[tuple[SpanCheck, list[Span]]]) -> str:
        buf, pos = self._buf, self._ctx
        out = redact(buf[:cut], to_redact)[pos:] if to_redact else buf[pos:cut]
        keep = max(0, cut - CONTEXT_CHARS)
        self._buf, self._ctx = buf[keep:], cut - keep
        return out


def _not_inside(cut: int, spans: list[Span]) -> int:
    """Move `cut` back to the start of any match that straddles it (a match is released whole or not yet);
    one pass from the last span back: a move only lowers the cut, onto spans that start earlier."""
    for span in sorted(spans, key=lambda s: s.start, reverse=True):
        if span.start < cut < span.end:
            cut = span.start
    return cut
