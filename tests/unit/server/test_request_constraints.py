"""A request's `modelyard.constraints` are the config's `Constraints`: same names, same ranges, 400 with `param`."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from modelyard.schema.constraints import Constraints
from modelyard.schema.errors import GatewayError
from modelyard.server.validation import decode_body, validate_chat


def chat(constraints: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], "modelyard": {"constraints": constraints}}


def test_known_constraints_decode_into_the_struct() -> None:
    req = validate_chat(chat({"max_cost_per_request": 1.5, "min_quality": 0, "max_latency_ms": 2000}))
    assert req.modelyard is not None
    assert req.modelyard.constraints == Constraints(max_cost_per_request=1.5, min_quality=0.0, max_latency_ms=2000.0)


@pytest.mark.parametrize(
    ("constraints", "param", "needle"),
    [
        (
            {"max_cost": 1},
            "modelyard.constraints.max_cost",
            "Unknown routing constraint 'max_cost' (known: accepted, max_cost_",
        ),
        ({"min_qualty": 0.9}, "modelyard.constraints.min_qualty", "min_quality"),
        ({"max_cost_per_request": "x"}, "modelyard.constraints.max_cost_per_request", "Expected `float | null`"),
        ({"max_latency_ms": -1}, "modelyard.constraints.max_latency_ms", ">= 0.0"),
        ({"max_latency_ms": 1e10}, "modelyard.constraints.max_latency_ms", "<= 1000000000.0"),
        ({"min_quality": [1]}, "modelyard.constraints.min_quality", "got `array`"),
        ({"min_quality": True}, "modelyard.constraints.min_quality", "got `bool`"),
        ({"min_quality": float("nan")}, "modelyard.constraints.min_quality", ">= -1000000.0"),
        ({"max_cost_per_request": float("inf")}, "modelyard.constraints.max_cost_per_request", "<= 1000000.0"),
        ("cheap", "modelyard.constraints", "Expected `object | null`"),
    ],
)
def test_bad_constraints_are_a_400_naming_the_parameter(constraints: Any, param: str, needle: str) -> None:
    with pytest.raises(GatewayError) as info:
        validate_chat(chat(constraints))
    assert info.value.status == 400 and info.value.param == param
    assert needle in info.value.message


def test_a_huge_integer_from_json_is_refused() -> None:
    body = msgspec.json.encode(chat({"max_cost_per_request": 0})).replace(b":0}", b":1" + b"0" * 400 + b"}")
    with pytest.raises(GatewayError) as info:
        validate_chat(decode_body(body))
    assert info.value.status == 400 and info.value.param == "modelyard.constraints.max_cost_per_request"
