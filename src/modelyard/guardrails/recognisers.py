"""The built-in recognisers of `pii` and `secrets`: an RE2 candidate pattern per kind, and for the kinds with
a checksum or a numbering plan a validator (python-stdnum, phonenumbers) that turns candidates into findings.

Pattern first, validator second keeps a clean answer cheap (RE2 scans it once per kind, in linear time) and
keeps false positives low where it matters (a 16-digit order number is not a card unless its Luhn digit
agrees). Order matters: where two kinds' matches overlap, the earlier kind in its table wins (a card number
is not also reported as a phone number).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import phonenumbers
import re2
from stdnum import iban, luhn
from stdnum.br import cpf
from stdnum.ca import sin
from stdnum.de import idnr
from stdnum.es import dni
from stdnum.exceptions import ValidationError
from stdnum.fr import nir
from stdnum.in_ import aadhaar
from stdnum.it import codicefiscale
from stdnum.us import ssn

from modelyard.guardrails.shape import Shape, shape_of
from modelyard.schema.patterns import compile_ascii, compile_pattern

#: A validator: the candidate text → how many of its leading characters are the finding (0: none).
Validator = Callable[[str], int]


@dataclass(frozen=True, slots=True)
class Recogniser:
    kind: str
    pattern: re2._Regexp[str]
    #: The same pattern for an ASCII text's bytes (see `checks.SpanCheck.spans`).
    ascii: re2._Regexp[bytes]
    validate: Validator | None
    shape: Shape


def recogniser(kind: str, pattern: str, validate: Validator | None = None, *, shape_from: str = "") -> Recogniser:
    return Recogniser(kind, compile_pattern(pattern), compile_ascii(pattern), validate, shape_of(shape_from or pattern))


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def _whole_if(ok: Callable[[str], bool]) -> Validator:
    def validate(candidate: str) -> int:
        try:
            return len(candidate) if ok(candidate) else 0
        except (ValidationError, ValueError):
            return 0

    return validate


def _card(candidate: str) -> int:
    """The longest prefix that is a card number (13-19 digits, Luhn): `4111111111111111 12/27` matches
    greedily with the expiry's digits, and the number alone must still be found."""
    return _longest_prefix(candidate, lambda c: 13 <= len(_digits(c)) <= 19 and luhn.is_valid(_digits(c)))


#: Prefixes a validator tries per candidate at most (each may be a phone parse: the cost stays bounded).
PREFIX_TRIES = 4


def _longest_prefix(candidate: str, ok: Callable[[str], bool]) -> int:
    """The longest prefix ending in a digit before a separator (or the whole candidate) that `ok` accepts."""
    ends = [len(candidate)] + [i for i in range(len(candidate) - 1, 0, -1) if not candidate[i].isalnum()]
    for end in ends[:PREFIX_TRIES]:
        prefix = candidate[:end].rstrip(" .-")
        try:
            if prefix and ok(prefix):
                return len(prefix)
        except (ValidationError, ValueError):
            continue
    return 0


def _iban(candidate: str) -> int:
    """The longest prefix (cut at a space) that is a valid IBAN: a trailing word in capitals is not part of it."""
    end = len(candidate)
    while end >= 15:
        if iban.is_valid(candidate[:end]):
            return end
        end = candidate.rfind(" ", 0, end)
    return 0


_NINO_FIRST_BAD, _NINO_SECOND_BAD = set("DFIQUV"), set("DFIOQUV")
_NINO_PREFIX_BAD = {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"}


def _nino(candidate: str) -> bool:
    """UK National Insurance number: the prefix rules HMRC publishes (python-stdnum has no module for it)."""
    compact = candidate.replace(" ", "")
    first, second = compact[0], compact[1]
    return first not in _NINO_FIRST_BAD and second not in _NINO_SECOND_BAD and compact[:2] not in _NINO_PREFIX_BAD


#: Regions tried for a phone number written without a country code (+…).
PHONE_REGIONS = ("US", "GB")


def _phone(candidate: str) -> bool:
    digits = _digits(candidate)
    if not 7 <= len(digits) <= 15:
        return False
    regions = (None,) if candidate.startswith("+") else PHONE_REGIONS
    for region in regions:
        try:
            if phonenumbers.is_valid_number(phonenumbers.parse(candidate, region)):
                return True
        except phonenumbers.NumberParseException:
            continue
    return False


_SEP = "[ .-]?"

PII: tuple[Recogniser, ...] = (
    recogniser(
        "email",
        r"\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,6}\.[A-Za-z]{2,24}\b",
    ),
    recogniser("card", r"\b\d(?:[ -]?\d){12,18}\b", _card),
    recogniser("iban", r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b", _iban),
    recogniser("us_ssn", r"\b\d{3}[- ]\d{2}[- ]\d{4}\b", _whole_if(lambda c: ssn.is_valid(c.replace(" ", "-")))),
    recogniser("uk_nino", r"\b[A-Z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b", _whole_if(_nino)),
    recogniser("us_itin", r"\b9\d{2}-[78]\d-\d{4}\b"),
    recogniser("ca_sin", r"\b\d{3}[ -]\d{3}[ -]\d{3}\b", _whole_if(sin.is_valid)),
    recogniser("br_cpf", r"\b\d{3}\.\d{3}\.\d{3}-\d{2}\b", _whole_if(cpf.is_valid)),
    recogniser("in_aadhaar", r"\b[2-9]\d{3} \d{4} \d{4}\b", _whole_if(aadhaar.is_valid)),
    recogniser("de_tax_id", r"\b[1-9]\d{10}\b", _whole_if(idnr.is_valid)),
    recogniser("fr_nir", r"\b[12] ?\d{2} ?\d{2} ?(?:\d{2}|2A|2B) ?\d{3} ?\d{3} ?\d{2}\b", _whole_if(nir.is_valid)),
    recogniser("es_dni", r"\b\d{8}-?[A-Z]\b", _whole_if(dni.is_valid)),
    recogniser("it_fiscal_code", r"\b[A-Z]{6}\d{2}[A-Z]\d{2}[A-Z]\d{3}[A-Z]\b", _whole_if(codicefiscale.is_valid)),
    recogniser(
        "phone",
        r"(?:\+\d{1,3}"
        + _SEP
        + r")?(?:\(\d{2,4}\)"
        + _SEP
        + r"|\b\d{2,4}"
        + _SEP
        + r")\d{2,4}"
        + _SEP
        + r"\d{2,4}(?:"
        + _SEP
        + r"\d{1,4})?\b",
        lambda c: _longest_prefix(c, _phone),
    ),
)

# A private-key block: from its BEGIN line to its END line, or to the end of the text when the END line is
# missing (a truncated answer still must not leak the key). Its shape is the BEGIN line's: once that line
# is seen, the match runs to the end of the buffered text, so a stream holds everything from it on.
_KEY_BEGIN = r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY( BLOCK)?-----"
_KEY = _KEY_BEGIN + r"(?s:.*?-----END[A-Z0-9 ]{0,40}PRIVATE KEY( BLOCK)?-----|.*$)"

SECRETS: tuple[Recogniser, ...] = (
    recogniser("private_key", _KEY, shape_from=_KEY_BEGIN),
    recogniser("anthropic", r"\bsk-ant-(?:api|admin|oat|ort)\d{2}-[A-Za-z0-9_-]{20,200}"),
    recogniser("openai", r"\bsk-(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_-]{20,200}"),
    recogniser("aws_access_key", r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b"),
    recogniser(
        "aws_secret_key",
        r"(?i)\baws_?secret_?(?:access_?)?key\b[\"']?\s{0,3}[:=]\s{0,3}[\"']?[A-Za-z0-9/+=]{40}\b",
    ),
    recogniser("github", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,255})\b"),
    recogniser("gitlab", r"\bglpat-[A-Za-z0-9_-]{20,50}\b"),
    recogniser("slack", r"\bxox[abposre]-[A-Za-z0-9-]{10,250}"),
    recogniser(
        "slack_webhook", r"https://hooks\.slack\.com/services/T[A-Z0-9]{6,12}/B[A-Z0-9]{6,12}/[A-Za-z0-9]{20,32}"
    ),
    recogniser("google_api_key", r"\bAIza[0-9A-Za-z_-]{35}"),
    recogniser("stripe", r"\b(?:sk|rk|pk|whsec)_(?:live|test)_[0-9A-Za-z]{10,247}\b"),
    recogniser("huggingface", r"\bhf_[A-Za-z0-9]{34,40}\b"),
    recogniser("jwt", r"\beyJ[A-Za-z0-9_-]{8,1000}\.eyJ[A-Za-z0-9_-]{8,1000}\.[A-Za-z0-9_-]{8,1000}"),
)

PII_KINDS: frozenset[str] = frozenset(r.kind for r in PII)
SECRET_KINDS: frozenset[str] = frozenset(r.kind for r in SECRETS)


def select(table: tuple[Recogniser, ...], kinds: list[str] | None, check: str) -> tuple[Recogniser, ...]:
    """The recognisers of `kinds` (all when None), in table order; an unknown kind is a ValueError."""
    if kinds is None:
        return table
    known = {r.kind for r in table}
    unknown = [k for k in kinds if k not in known]
    if unknown:
        raise ValueError(f"`{check}` has no kind {', '.join(map(repr, unknown))} (known: {', '.join(sorted(known))})")
    return tuple(r for r in table if r.kind in kinds)


def warm_up() -> None:
    """Load phonenumbers' lazily read metadata now (the first parse per region costs milliseconds), so the
    first request that meets a phone number does not pay for it."""
    for sample in ("+1 415 555 2671", "+44 20 7946 0958", "(415) 555-2671", "020 7946 0958"):
        _phone(sample)
