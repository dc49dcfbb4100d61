"""The one parser of `data:` URLs (images and files sent inline), shared by the adapters that unpack them.

Providers take inline media as a media type plus base64 data, so only `data:<type>/<subtype>[;k=v]*;base64,
<data>` is accepted, checked to that grammar (RFC 2397, base64 only): a request that cannot be sent as asked
is a 400 naming the part, not a provider's puzzling error. The payload's alphabet is not checked here: that
would cost milliseconds per megabyte on the request path, and the provider rejects a bad payload itself.
"""

from __future__ import annotations

import re

from modelyard.schema.errors import bad_request

_TOKEN = r"[a-z0-9][a-z0-9!#$&^_.+\-]*"
_MEDIA_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}")
_PARAMETER = re.compile(rf"{_TOKEN}=[^;,]*")
FORM = "data:<type>/<subtype>;base64,<data>"


def parse_data_url(url: str, param: str | None = None) -> tuple[str, str]:
    """(media type in lower case, base64 data) of a `data:` URL; a GatewayError (400) at `param` otherwise."""
    head, comma, data = url.partition(",")
    if not head.startswith("data:") or not comma:
        raise bad_request(f"not a data URL: expected {FORM}", param=param)
    media_type, *params = head[5:].lower().split(";")
    if not params or params[-1] != "base64":
        raise bad_request(f"data URLs must be base64: expected {FORM}", param=param)
    if not _MEDIA_TYPE.fullmatch(media_type):
        raise bad_request(f"data URLs need a media type: expected {FORM}", param=param)
    if not all(_PARAMETER.fullmatch(p) for p in params[:-1]):
        raise bad_request(f"malformed data URL parameters: expected {FORM}", param=param)
    if not data:
        raise bad_request("the data URL carries no data", param=param)
    return media_type, data
