"""What a guardrail check is, as configured (`guardrails:` sets, a model's `guardrails:`) or asked for per
request (`extra_body.modelyard.guardrails`): one Struct shared by config and requests, like `Constraints`.

The shape is checked here (which actions and stages a check allows, required parameters); compiling the
check (RE2 patterns, the PII recognisers, a `python:` function) is `modelyard.guardrails`' job.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct, field

CheckName = Literal[
    "pii", "secrets", "regex", "keywords", "json_schema", "injection", "empty", "truncated", "max_length", "python"
]
Stage = Literal["input", "output"]
Action = Literal["block", "redact", "retry", "warn"]

#: Checks whose findings are spans of text, so `redact` can replace them.
REDACTABLE: frozenset[str] = frozenset({"pii", "secrets", "regex", "keywords"})
#: Checks that only make sense on one side.
OUTPUT_ONLY: frozenset[str] = frozenset({"json_schema", "empty", "truncated"})
INPUT_ONLY: frozenset[str] = frozenset({"injection"})
#: What a client may add per request: built-in checks with parameters, never code or raw patterns.
REQUEST_ALLOWED: frozenset[str] = frozenset(
    {"pii", "secrets", "keywords", "json_schema", "injection", "empty", "truncated", "max_length"}
)

#: The entity kinds `pii` knows (docs/guardrails.md has each one's format and validation).
PII_KINDS: tuple[str, ...] = (
    "email", "card", "iban", "us_ssn", "uk_nino", "us_itin", "ca_sin", "br_cpf", "in_aadhaar", "de_tax_id",
    "fr_nir", "es_dni", "it_fiscal_code", "phone",
)  # fmt: skip
#: The key formats `secrets` knows.
SECRET_KINDS: tuple[str, ...] = (
    "private_key", "anthropic", "openai", "aws_access_key", "aws_secret_key", "github", "gitlab", "slack",
    "slack_webhook", "google_api_key", "stripe", "huggingface", "jwt",
)  # fmt: skip

Label = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
Word = Annotated[str, Meta(min_length=1, max_length=200)]


class CheckSpec(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """One check: what it looks at (`stage`), what happens when it fires (`action`), and what happens when
    the check itself fails (`on_error`: `fail` = fail closed, the default; `allow` = let the text through)."""

    check: CheckName
    stage: Stage = "output"
    action: Action = "block"
    on_error: Literal["fail", "allow"] = "fail"
    #: The name in errors, headers, metrics and the spend log (default: the check's own name).
    name: Label | None = None
    #: pii: entity kinds (default: all the recogniser knows); secrets: key formats (default: all).
    kinds: Annotated[list[Label], Meta(max_length=64)] | None = None
    #: regex: RE2 patterns (linear time; config only, never per request).
    patterns: Annotated[list[Annotated[str, Meta(min_length=1, max_length=2000)]], Meta(max_length=256)] = field(
        default_factory=list
    )
    #: keywords: words or phrases, matched case-insensitively on word boundaries.
    words: Annotated[list[Word], Meta(max_length=1000)] = field(default_factory=list)
    #: max_length: the most characters the text may have.
    max_chars: Annotated[int, Meta(ge=1, le=100_000_000)] | None = None
    #: python: `package.module:function` (config only, never per request).
    function: str | None = None
    #: redact: what replaces a span; `{kind}` is the entity kind or the check's name.
    replacement: Annotated[str, Meta(max_length=200)] = "[{kind}]"
    #: json_schema: the schema the answer must match (default: the request's `response_format` schema, and
    #: the check passes when the request asked for no JSON).
    json_schema: dict[str, object] | None = None

    def __post_init__(self) -> None:
        check = self.check
        if self.action == "redact" and check not in REDACTABLE:
            raise ValueError(f"`{check}` cannot redact (only {', '.join(sorted(REDACTABLE))} find spans)")
        if self.action == "retry" and self.stage != "output":
            raise ValueError("`retry` asks the next candidate for another answer: output checks only")
        if self.stage == "input" and check in OUTPUT_ONLY:
            raise ValueError(f"`{check}` checks an answer: stage must be `output`")
        if self.stage == "output" and check in INPUT_ONLY:
            raise ValueError(f"`{check}` checks tool results and retrieved text in the request: stage must be `input`")
        if check == "regex" and not self.patterns:
            raise ValueError("`regex` needs `patterns`")
        if check == "keywords" and not self.words:
            raise ValueError("`keywords` needs `words`")
        if check == "max_length" and self.max_chars is None:
            raise ValueError("`max_length` needs `max_chars`")
        if check == "python" and (self.function is None or ":" not in self.function):
            raise ValueError("`python` needs `function: package.module:function`")
        self._check_parameters()

    def _check_parameters(self) -> None:
        """The parameters' own validity, so a bad one fails at config load (file:line), not at first use."""
        known = {"pii": PII_KINDS, "secrets": SECRET_KINDS}.get(self.check)
        if self.kinds is not None:
            if known is None:
                raise ValueError(f"`kinds` applies to `pii` and `secrets`, not `{self.check}`")
            unknown = [k for k in self.kinds if k not in known]
            if unknown:
                raise ValueError(f"unknown {self.check} kind {unknown[0]!r} (known: {', '.join(known)})")
        if self.patterns:
            _check_patterns(self.patterns)
        if self.json_schema is not None:
            _check_schema(self.json_schema)

    @property
    def label(self) -> str:
        return self.name or self.check


def _check_patterns(patterns: list[str]) -> None:
    from modelyard.schema.patterns import compile_pattern  # here: importing schema stays cheap

    for pattern in patterns:
        compile_pattern(pattern)


def _check_schema(schema: dict[str, object]) -> None:
    from modelyard.schema.patterns import make_validator

    try:
        make_validator(schema)
    except ValueError as exc:
        raise ValueError(f"`json_schema` is not a valid JSON Schema: {exc}") from None
