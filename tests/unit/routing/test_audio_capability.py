"""An `input_audio` part is only routed to deployments that list the `audio` capability (a text-only model would
ignore or refuse it), whether or not the group's static profile would otherwise let the candidates pass as they
are; the explanation says why the others were skipped."""

from __future__ import annotations

from modelyard.routing.candidates import GroupProfile, filter_candidates
from modelyard.routing.features import RequestFeatures, chat_features
from modelyard.schema.chat import AudioPart, ChatRequest, InputAudio, TextPart, UserMessage

from .helpers import ctx, dep


def audio_request() -> ChatRequest:
    parts = [TextPart(text="what is said here?"), AudioPart(input_audio=InputAudio(data="UklGRg==", format="wav"))]
    return ChatRequest(model="m", messages=[UserMessage(content=parts)])


def test_an_audio_part_is_a_feature_of_the_request() -> None:
    assert chat_features(audio_request()).needs_audio
    assert not chat_features(ChatRequest(model="m", messages=[UserMessage(content="hi")])).needs_audio


def test_only_audio_capable_deployments_serve_an_audio_prompt() -> None:
    deps = [dep("text-only"), dep("hears", capabilities=["audio", "streaming"])]
    c = ctx(RequestFeatures(prompt_tokens=10, needs_audio=True), deployments=deps)
    kept = filter_candidates(deps, c, profile=GroupProfile.of(deps))
    assert [d.name for d in kept] == ["hears"]
    assert {s.deployment: s.reason for s in c.skipped}["text-only"] == "lacks capability audio"


def test_without_audio_the_profile_shortcut_keeps_everyone() -> None:
    deps = [dep("text-only"), dep("hears", capabilities=["audio"])]
    c = ctx(RequestFeatures(prompt_tokens=10), deployments=deps)
    assert [d.name for d in filter_candidates(deps, c, profile=GroupProfile.of(deps))] == ["text-only", "hears"]
