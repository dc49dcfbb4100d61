"""Request features: everything a routing decision may look at, computed once per request.

Strategies and filters read only this (plus the health view), never the raw request, so a decision is
a pure function of small, explicit inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from modelyard.accounting.tokens import count_request
from modelyard.schema.chat import (
    AudioPart,
    ChatRequest,
    ImagePart,
    ResponseFormatJsonObject,
    ResponseFormatJsonSchema,
    Usage,
    UserMessage,
    text_of,
)


@dataclass(slots=True)
class RequestFeatures:
    prompt_tokens: int = 0
    max_output_tokens: int | None = None
    needs_tools: bool = False
    needs_vision: bool = False
    #: An `input_audio` part in a user turn: only deployments listing the `audio` capability may serve it.
    needs_audio: bool = False
    needs_json: bool = False
    needs_json_schema: bool = False
    stream: bool = False
    task: str | None = None
    complexity: str | None = None
    key_name: str | None = None
    tags: tuple[str, ...] = ()
    kind: str = "chat"
    #: The last user turn's text, for learned and semantic routing (empty for embeddings).
    prompt_text: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    #: The deployments this request's key may reach (None: unrestricted). The planner and the executor's
    #: walk never try a deployment outside it, whatever overrides, fallbacks or hedges ask for.
    allowed: frozenset[str] | None = None
    #: Completions asked for (`n`): the answer's tokens, and so its cost, are multiplied by it.
    choices: int = 1
    #: The conversation this request belongs to (`routing.sticky.session_key`), set by the ingress when the
    #: model keeps sessions sticky: strategies that would draw at random choose by rendezvous hashing on it.
    session: str | None = None
    #: Units other than tokens the request will be billed for, known at the edge (an upload's audio seconds,
    #: the characters to speak, the images asked for, the rerank search units): budgets reserve them at the
    #: dearest reachable price, and a provider that reports no usage is charged them.
    units: Usage | None = None

    def output_estimate(self, default: int = 256) -> int:
        """Tokens we expect the answer to take: the cap when given, else a typical answer length."""
        return self.max_output_tokens if self.max_output_tokens is not None else default


def chat_features(
    req: ChatRequest,
    *,
    task: str | None = None,
    key_name: str | None = None,
    tags: tuple[str, ...] = (),
    session: str | None = None,
) -> RequestFeatures:
    """Features of a chat request; `task`/`tags` from headers win over the body's; `session` from
    `routing.sticky.session_key` (None: no stickiness)."""
    metadata = req.metadata or {}
    options = req.modelyard
    needs_vision = needs_audio = False
    last_user = ""
    for message in req.messages:
        if isinstance(message, UserMessage):
            content = message.content
            if not isinstance(content, str):
                for part in content:
                    if isinstance(part, ImagePart):
                        needs_vision = True
                    elif isinstance(part, AudioPart):
                        needs_audio = True
            last_user = text_of(content)
    fmt = req.response_format
    body_tags = tuple(options.tags) if options and options.tags else ()
    return RequestFeatures(
        prompt_tokens=count_request(req),
        max_output_tokens=req.output_limit,
        needs_tools=bool(req.tools),
        needs_vision=needs_vision,
        needs_audio=needs_audio,
        needs_json=isinstance(fmt, ResponseFormatJsonObject | ResponseFormatJsonSchema),
        needs_json_schema=isinstance(fmt, ResponseFormatJsonSchema),
        stream=bool(req.stream),
        task=task or (options.task if options and options.task else None) or metadata.get("task"),
        complexity=metadata.get("complexity"),
        key_name=key_name,
        tags=tags + body_tags,
        prompt_text=last_user,
        metadata=metadata,
        choices=req.n or 1,
        session=session,
    )
