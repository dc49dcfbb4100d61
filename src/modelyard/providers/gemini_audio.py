"""Audio transcription and translation through Gemini: OpenAI's `/v1/audio/transcriptions` and
`/v1/audio/translations` as a `generateContent` call.

Gemini has no speech-to-text endpoint; it listens. The upload goes out as an inline audio part (`inlineData`
with its media type, base64) after an instruction ("Transcribe this audio verbatim." / "Translate this audio
into English."), with the client's `language` and `prompt` folded into that instruction, and the model's
text comes back in OpenAI's shape: `{"text": ...}`, or the bare text for `response_format: text`. The
timed formats (`srt`, `vtt`, `verbose_json`) need segment timestamps Gemini does not give: a 400 naming
`response_format`.

The request is built as a one-message canonical chat request and sent through the adapter's own
`chat_call`/`parse_chat`, so a subclass that changes where and how Gemini is reached (Vertex AI's URL and
OAuth) serves these endpoints unchanged. Usage: Gemini's token counts (it bills audio by tokens) plus the
audio seconds measured at the edge; price such a deployment by `input`/`output`, or by `audio_minute`, not
both.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

from modelyard.config.model import Deployment
from modelyard.providers.base import Completion, HttpCall
from modelyard.schema.chat import ChatRequest, ContentPart, FilePart, FileRef, TextPart, Usage, UserMessage
from modelyard.schema.endpoints import EndpointRequest, UploadedFile
from modelyard.schema.errors import ErrorKind, GatewayError, ProviderError, bad_request

__all__ = ["GeminiAudioEndpoints", "audio_mime", "instruction", "transcription_chat"]

TRANSCRIBE = "audio/transcriptions"
TRANSLATE = "audio/translations"
_FORMATS = frozenset({"json", "text"})

#: Media types Gemini documents for audio, by the names uploads arrive with (browsers, `mimetypes`).
_MIME_ALIASES = {
    "audio/x-wav": "audio/wav",
    "audio/wave": "audio/wav",
    "audio/vnd.wave": "audio/wav",
    "audio/mpeg": "audio/mp3",
    "audio/mpeg3": "audio/mp3",
    "audio/x-mpeg-3": "audio/mp3",
    "audio/x-aiff": "audio/aiff",
    "audio/x-flac": "audio/flac",
    "audio/x-aac": "audio/aac",
}
#: By file extension, when the upload's own type says nothing (`application/octet-stream`).
_MIME_BY_EXTENSION = {
    "wav": "audio/wav",
    "mp3": "audio/mp3",
    "mpga": "audio/mp3",
    "mpeg": "audio/mp3",
    "aiff": "audio/aiff",
    "aif": "audio/aiff",
    "aac": "audio/aac",
    "m4a": "audio/aac",
    "ogg": "audio/ogg",
    "oga": "audio/ogg",
    "opus": "audio/ogg",
    "flac": "audio/flac",
    "webm": "audio/webm",
    "mp4": "audio/mp4",
}


class _GeminiChat(Protocol):
    """What the mixin needs from the adapter it is mixed into."""

    def chat_call(self, dep: Deployment, req: ChatRequest, raw: dict[str, Any], stream: bool) -> HttpCall: ...

    def parse_chat(self, dep: Deployment, req: ChatRequest, body: bytes) -> Completion: ...


def audio_mime(upload: UploadedFile) -> str:
    """The upload's media type as Gemini names it: its own when it is audio (or video: Gemini hears the
    sound track), else from the file name; a 400 when neither says what it is."""
    declared = upload.content_type.split(";", 1)[0].strip().lower()
    declared = _MIME_ALIASES.get(declared, declared)
    if declared.startswith(("audio/", "video/")):
        return declared
    name = upload.filename.rsplit("/", 1)[-1]
    extension = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    guessed = _MIME_BY_EXTENSION.get(extension)
    if guessed is None:
        raise bad_request(
            f"cannot tell the audio format of {upload.filename!r} ({upload.content_type}): upload it with an "
            "audio content type or a known extension (wav, mp3, flac, ogg, aac, aiff, webm)",
            param="file",
        )
    return guessed


def instruction(endpoint: str, fields: Mapping[str, Any]) -> str:
    """What Gemini is told to do with the audio: the task, the spoken language when the client named it,
    and the client's `prompt` (spellings, context) as a hint, never as an order."""
    if endpoint == TRANSLATE:
        lines = ["Translate this audio into English."]
    else:
        lines = ["Transcribe this audio verbatim."]
        language = fields.get("language")
        if isinstance(language, str) and language.strip():
            lines.append(f"The audio is in the language with ISO-639-1 code {language.strip()!r}.")
    prompt = fields.get("prompt")
    if isinstance(prompt, str) and prompt.strip():
        lines.append(f"Context and spellings from the previous audio or the caller: {prompt.strip()}")
    lines.append("Answer with the text only: no commentary, no quotes, no timestamps.")
    return "\n".join(lines)


def _response_format(req: EndpointRequest) -> str:
    value = req.fields.get("response_format") or "json"
    fmt = str(value).lower()
    if fmt not in _FORMATS:
        raise bad_request(
            f"response_format {value!r} is not available through Gemini (it gives no timestamps): use json or text",
            param="response_format",
        )
    return fmt


def _temperature(req: EndpointRequest) -> float | None:
    value = req.fields.get("temperature")
    if value is None or value == "":
        return None
    try:
        temperature = float(value)
    except (TypeError, ValueError):
        raise bad_request("temperature must be a number", param="temperature") from None
    if not 0.0 <= temperature <= 2.0:
        raise bad_request("temperature must be between 0 and 2", param="temperature")
    return temperature


def transcription_chat(dep: Deployment, req: EndpointRequest) -> ChatRequest:
    """The one-message chat request that asks Gemini for the transcript (or translation) of the upload."""
    if req.endpoint not in (TRANSCRIBE, TRANSLATE):
        raise GatewayError(400, f"Gemini does not serve /v1/{req.endpoint}")
    upload = req.file
    if upload is None or not upload.data:
        raise bad_request("an audio file is required", param="file")
    _response_format(req)
    data_url = f"data:{audio_mime(upload)};base64,{base64.b64encode(upload.data).decode()}"
    content: list[ContentPart] = [
        TextPart(text=instruction(req.endpoint, req.fields)),
        FilePart(file=FileRef(file_data=data_url, filename=upload.filename)),
    ]
    return ChatRequest(model=dep.model, messages=[UserMessage(content=content)], temperature=_temperature(req))


class GeminiAudioEndpoints:
    """The `Endpoints` capability for audio, mixed into the Gemini adapter (and so into its subclasses)."""

    endpoints: ClassVar[frozenset[str]] = frozenset({TRANSCRIBE, TRANSLATE})

    def endpoint_call(self: _GeminiChat, dep: Deployment, req: EndpointRequest) -> HttpCall:
        return self.chat_call(dep, transcription_chat(dep, req), {}, False)

    def parse_endpoint(
        self: _GeminiChat, dep: Deployment, req: EndpointRequest, body: bytes, headers: Mapping[str, str]
    ) -> Completion:
        chat = ChatRequest(model=dep.model, messages=[])
        completion = self.parse_chat(dep, chat, body)
        choices = completion.body.get("choices") or [{}]
        if choices[0].get("finish_reason") == "content_filter":
            raise ProviderError(ErrorKind.CONTENT_FILTER, "Gemini withheld the transcript (safety filter)")
        message = choices[0].get("message") or {}
        text = message.get("content")  # "" is a transcript too: the audio was silent
        if not isinstance(text, str):
            raise ProviderError(ErrorKind.SERVER, "Gemini answered the audio without text")
        text = text.strip()
        tokens = completion.usage
        usage = Usage(
            prompt=tokens.prompt,
            completion=tokens.completion,
            cached=tokens.cached,
            reasoning=tokens.reasoning,
            audio_seconds=req.units.audio_seconds,
        )
        if _response_format(req) == "text":
            return Completion({"text": text}, usage, completion.model, native=text.encode(), media_type="text/plain")
        out = {
            "text": text,
            "usage": {
                "type": "tokens",
                "input_tokens": usage.prompt,
                "output_tokens": usage.completion,
                "total_tokens": usage.total,
            },
        }
        return Completion(out, usage, completion.model)
