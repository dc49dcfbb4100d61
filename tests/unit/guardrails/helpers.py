"""Shared test helpers: fake values that pass each recogniser's validation (none is anyone's real data)."""

from __future__ import annotations

from typing import Any

import msgspec

from modelyard.guardrails import GuardSet, compile_checks
from modelyard.schema.chat import ChatRequest
from modelyard.schema.guardrails import CheckSpec

PII_SAMPLES = {
    "email": "jane.doe+test@example.co.uk",
    "card": "4111 1111 1111 1111",
    "iban": "DE89 3704 0044 0532 0130 00",
    "us_ssn": "123-45-6789",
    "uk_nino": "AB 12 34 56 C",
    "us_itin": "912-71-1234",
    "ca_sin": "130 692 544",
    "br_cpf": "390.533.447-05",
    "in_aadhaar": "2345 6789 0124",
    "de_tax_id": "36574261809",
    "fr_nir": "2 95 10 99 126 111 93",
    "es_dni": "54362315K",
    "it_fiscal_code": "RCCMNL83S18D969H",
    "phone": "+44 20 7946 0958",
}
SECRET_SAMPLES = {
    "private_key": "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx1\nabc==\n-----END RSA PRIVATE KEY-----",
    "anthropic": "sk-ant-api03-" + "A1b2C3d4" * 12,
    "openai": "sk-proj-" + "Ab3dEf6hIj9lMn2pQr5t" * 2,
    "aws_access_key": "AKIAIOSFODNN7EXAMPLE",
    "aws_secret_key": "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "github": "ghp_" + "a1B2c3D4e5F6g7H8i9J0" * 2,
    "gitlab": "glpat-" + "x1Y2z3W4v5U6t7S8r9Q0",
    "slack": "xoxb-123456789012-abcdefABCDEF",
    "slack_webhook": "https://hooks.slack.com/services/T0ABCDEF1/B0ABCDEF2/" + "aB3dE6gH9jK2mN5pQ8sT1vW4",
    "google_api_key": "AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q",
    "stripe": "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc",
    "huggingface": "hf_" + "aBcDeFgHiJkLmNoPqRsTuVwXyZ12345678",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
}


def spec(**fields: Any) -> CheckSpec:
    return msgspec.convert(fields, CheckSpec)


def guards(*specs: dict[str, Any], trusted: bool = True) -> GuardSet:
    return compile_checks([spec(**s) for s in specs], trusted=trusted)


def request(*messages: dict[str, Any], **extra: Any) -> ChatRequest:
    return msgspec.convert({"model": "m", "messages": list(messages), **extra}, ChatRequest)
