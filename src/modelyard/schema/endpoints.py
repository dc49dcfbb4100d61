"""The endpoints beyond chat and embeddings: audio transcription, translation and speech, image generation,
rerank. One canonical request type for all of them, routed, limited, budgeted and logged like chat.

The ingress (server/endpoints.py) reads the client's JSON body or multipart form into an `EndpointRequest`,
measures what it will be billed for (`units`: an upload's audio seconds, the characters to speak, the
images asked for, the rerank search units) and hands it to the router; an adapter with the `Endpoints`
capability (providers/base.py) turns it into its provider's call and the answer back into OpenAI's shape
(Cohere's v2 shape for rerank, which OpenAI has none of).
"""

from __future__ import annotations

from typing import Any, Literal

from msgspec import Struct, field

from modelyard.schema.chat import Usage

__all__ = [
    "ENDPOINT_KINDS",
    "Endpoint",
    "EndpointRequest",
    "UploadedFile",
]

Endpoint = Literal[
    "audio/transcriptions",
    "audio/translations",
    "audio/speech",
    "images/generations",
    "rerank",
]

#: The deployment `kind` that serves each endpoint (config.model.Deployment.kind).
ENDPOINT_KINDS: dict[str, str] = {
    "audio/transcriptions": "transcription",
    "audio/translations": "transcription",
    "audio/speech": "speech",
    "images/generations": "image",
    "rerank": "rerank",
}


class UploadedFile(Struct, kw_only=True):
    """A file from a multipart upload, read whole (the ingress bounds its size before it is read)."""

    #: The form field it came in (`file`).
    field: str
    filename: str
    content_type: str
    data: bytes


class EndpointRequest(Struct, kw_only=True):
    """One call to a non-chat endpoint, as the client sent it.

    `fields` is the JSON body, or a multipart form's text fields (values as strings, as forms carry them),
    with `model` in it; adapters read what their provider needs and pass the rest through where the provider
    shares OpenAI's names.
    """

    endpoint: Endpoint
    model: str
    fields: dict[str, Any]
    file: UploadedFile | None = None
    #: What the request will be billed for, measured at the edge before any call: the budget reserves it at
    #: the dearest reachable price, and an answer whose provider reports no usage is charged it.
    units: Usage = field(default_factory=Usage)
