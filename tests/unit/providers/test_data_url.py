"""The one `data:` URL parser both the Anthropic and the Gemini adapter use, table-tested."""

from __future__ import annotations

from typing import Any

import pytest

from modelyard.config.model import Deployment
from modelyard.providers import load_adapter
from modelyard.providers.data_url import parse_data_url
from modelyard.schema.chat import chat_request_from_dict
from modelyard.schema.errors import GatewayError


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("data:image/png;base64,iVBORw0KGgo=", ("image/png", "iVBORw0KGgo=")),
        ("data:IMAGE/JPEG;BASE64,/9j/4AAQ", ("image/jpeg", "/9j/4AAQ")),  # case-insensitive, lowered
        ("data:text/plain;charset=utf-8;base64,aGVsbG8=", ("text/plain", "aGVsbG8=")),  # parameters allowed
        ("data:application/vnd.ms-excel;base64,AAAA", ("application/vnd.ms-excel", "AAAA")),
        ("data:image/svg+xml;base64,PHN2Zz4=", ("image/svg+xml", "PHN2Zz4=")),
        ("data:image/png;base64,a,b", ("image/png", "a,b")),  # only the first comma splits
    ],
)
def test_well_formed_base64_data_urls(url: str, expected: tuple[str, str]) -> None:
    assert parse_data_url(url, "messages[0].content[0]") == expected


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("data:image/png,rawbytes", "must be base64"),  # not base64 (both adapters refused it)
        ("data:image/png;base64", "not a data URL"),  # no comma, no data
        ("data:;base64,AAAA", "need a media type"),  # Anthropic accepted an empty media type
        ("data:base64,AAAA", "must be base64"),  # `base64` must be a parameter, not the type
        ("data:image;base64,AAAA", "need a media type"),  # a type without a subtype
        ("data:image/png;base64;charset=utf-8,AAAA", "must be base64"),  # Gemini accepted base64 anywhere
        ("data:image/png;charset;base64,AAAA", "malformed data URL parameters"),
        ("data:image/png;base64,", "no data"),
        ("https://example.com/a.png", "not a data URL"),
        ("", "not a data URL"),
    ],
)
def test_malformed_data_urls_are_a_400_at_the_part(url: str, needle: str) -> None:
    with pytest.raises(GatewayError) as info:
        parse_data_url(url, "messages[0].content[1]")
    assert info.value.status == 400
    assert info.value.param == "messages[0].content[1]"
    assert needle in info.value.message
    assert "data:<type>/<subtype>;base64,<data>" in info.value.message or needle == "no data"


@pytest.mark.parametrize("provider", ["anthropic", "gemini"])
@pytest.mark.parametrize(
    ("part", "needle"),
    [
        ({"type": "image_url", "image_url": {"url": "data:;base64,AAAA"}}, "need a media type"),
        ({"type": "image_url", "image_url": {"url": "data:image/png;base64;x=y,AAAA"}}, "must be base64"),
        ({"type": "file", "file": {"file_data": "data:application/pdf;base64,", "filename": "a.pdf"}}, "no data"),
    ],
)
def test_both_adapters_refuse_the_same_urls_with_the_same_message(
    provider: str, part: dict[str, Any], needle: str
) -> None:
    raw = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "see"}, part]}]}
    dep = Deployment(name="d", provider=provider, model="m")
    with pytest.raises(GatewayError) as info:
        load_adapter(provider).chat_call(dep, chat_request_from_dict(raw), raw, stream=False)
    assert info.value.status == 400
    assert info.value.param == "messages[0].content[1]"
    assert needle in info.value.message
