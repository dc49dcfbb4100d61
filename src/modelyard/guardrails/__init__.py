"""Guardrails: checks on every request's input and output, whatever model answered (docs/guardrails.md).

Compile specs once (`compile_checks`), combine the sets a request is under (`combine`), then
`check_input` before the upstream call, `check_output` on a whole answer, or a `StreamGuard` per stream.
"""

from modelyard.guardrails.checks import CheckContext
from modelyard.guardrails.compile import EMPTY, GuardSet, combine, compile_checks
from modelyard.guardrails.findings import Finding, header_value
from modelyard.guardrails.run import InputVerdict, OutputVerdict, check_input, check_output
from modelyard.guardrails.stream import StreamGuard

__all__ = [
    "EMPTY",
    "CheckContext",
    "Finding",
    "GuardSet",
    "InputVerdict",
    "OutputVerdict",
    "StreamGuard",
    "check_input",
    "check_output",
    "combine",
    "compile_checks",
    "header_value",
]
