"""Claude Code (`claude -p`, npm) completes a task that needs its Read tool, through the gateway, on loopback.

The simulator's convention (sim/behaviour.py): a tool named in the prompt and followed by a JSON object is
called with that object; after the tool result it answers `Tool result received: <the result>`. So the
secret word, which only exists in a file, reaching Claude Code's final answer proves the whole loop ran:
model asks for Read → Claude Code reads the file → the result goes back → the model answers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard.sim.server import SimServer
from modelyard.testing.recorder import Exchange, RecordingProxy
from tests.e2e.clients.conftest import CLAUDE_OFFLINE_ENV, ClientRun, run_client, save_fixture

SECRET = "PINEAPPLE-7731"
#: Lets a `role: "system"` message into `messages`; Anthropic refuses such a body without it.
MID_CONVERSATION_SYSTEM = "mid-conversation-system-2026-04-07"

pytestmark = pytest.mark.usefixtures("strace_ok")


def _claude(claude_bin: Path, proxy: RecordingProxy, tmp_path: Path, model: str | None, prompt: str) -> ClientRun:
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    env = {
        "HOME": str(home),
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "ANTHROPIC_BASE_URL": proxy.url,
        "ANTHROPIC_API_KEY": "sk-client-test",
        **CLAUDE_OFFLINE_ENV,
    }
    command = [
        str(claude_bin),
        "-p",
        prompt,
        *(["--model", model] if model else []),
        "--allowedTools",
        "Read",
        "--output-format",
        "json",
        "--max-turns",
        "4",
    ]
    return run_client(command, env=env, cwd=work, proxy=proxy, trace=tmp_path / "strace.log")


def _answer_model(sse: str) -> str:
    """`message_start.message.model` of an Anthropic SSE answer."""
    for line in sse.splitlines():
        if line.startswith("data: ") and '"message_start"' in line:
            return str(json.loads(line[6:])["message"]["model"])
    raise AssertionError(f"no message_start in {sse[:300]!r}")


def _streamed_thinking(sse: str) -> list[dict[str, Any]]:
    """The thinking blocks of an Anthropic SSE answer, put back together from their deltas."""
    blocks: dict[int, dict[str, Any]] = {}
    for line in sse.splitlines():
        if not line.startswith("data: "):
            continue
        event = json.loads(line[6:])
        if event["type"] == "content_block_start" and event["content_block"]["type"] == "thinking":
            blocks[event["index"]] = dict(event["content_block"])
        elif event["type"] == "content_block_delta" and event["index"] in blocks:
            delta, block = event["delta"], blocks[event["index"]]
            if delta["type"] == "thinking_delta":
                block["thinking"] = block.get("thinking", "") + delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] = block.get("signature", "") + delta["signature"]
    return [blocks[i] for i in sorted(blocks)]


def _check_upstream(sim: SimServer, call: Exchange) -> None:
    """On pass-through the simulator received Claude Code's body with only `model` rewritten, and every beta
    the body depends on."""
    sent = call.json()
    log = httpx.get(f"{sim.url}/_sim/requests/sim-small", timeout=10).json()["requests"]
    mine = [
        r
        for r in log
        if r["path"].startswith("/v1/messages") and json.loads(r["body"]) == {**sent, "model": "sim-small"}
    ]
    assert mine, "the upstream never received Claude Code's body unchanged (but for model)"
    betas = {b.strip() for b in mine[-1]["headers"].get("anthropic-beta", "").split(",")}
    if any(m["role"] == "system" for m in sent["messages"]):
        assert MID_CONVERSATION_SYSTEM in betas, f"a role=system message went upstream without its beta: {betas}"
    assert mine[-1]["headers"].get("anthropic-version") == "2023-06-01"


def _tool_results(body: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for message in body["messages"]:
        content = message["content"]
        if message["role"] == "user" and isinstance(content, list):
            found.extend(block for block in content if block.get("type") == "tool_result")
    return found


@pytest.mark.parametrize("model", ["via-anthropic", "via-openai"])
def test_claude_code_reads_a_file_through_the_gateway(
    claude_bin: Path, proxy: RecordingProxy, clients_sim: SimServer, tmp_path: Path, model: str
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    note = work / "note.txt"
    note.write_text(f"The secret word is {SECRET}.\n", encoding="utf-8")
    prompt = f"Use Read {json.dumps({'file_path': str(note)})} and tell me the secret word."

    run = _claude(claude_bin, proxy, tmp_path, model, prompt)

    if model == "via-anthropic":
        # The answer must name the model Claude Code asked for: with another name it takes the answer for a
        # model switch and leaves the thinking out of the next turn, which Anthropic then refuses.
        first_answer = next(e for e in run.exchanges if e.path.startswith("/v1/messages"))
        assert _answer_model(first_answer.response_body) == model, run.describe()
    assert run.returncode == 0, run.describe()
    result = json.loads(run.stdout)
    assert result["is_error"] is False, run.describe()
    assert SECRET in result["result"], run.describe()
    assert result["num_turns"] >= 2, run.describe()

    calls = [e for e in run.exchanges if e.method == "POST" and e.path.startswith("/v1/messages")]
    assert len(calls) >= 2, run.describe()
    assert all(e.status == 200 for e in calls), run.describe()
    first, second = calls[0].json(), calls[1].json()
    assert first["model"] == model and first["stream"] is True
    assert calls[0].header("anthropic-version") == "2023-06-01"
    # The second turn sends Read's output back as a tool_result for the Read call the gateway streamed.
    results = _tool_results(second)
    assert results, json.dumps(second["messages"])[-2000:]
    assert SECRET in json.dumps(results)
    uses = [b for m in second["messages"] if m["role"] == "assistant" for b in m["content"] if b["type"] == "tool_use"]
    assert [u["name"] for u in uses] == ["Read"]
    assert uses[0]["input"] == {"file_path": str(note)}
    # Thinking the model streamed goes back with the next turn exactly as signed (the simulator rejects
    # an altered or unsigned block, as Anthropic does; across wire formats there is none to return).
    thinking = _streamed_thinking(calls[0].response_body)
    returned = [
        b for m in second["messages"] if m["role"] == "assistant" for b in m["content"] if b["type"] == "thinking"
    ]
    assert [(b["thinking"], b["signature"]) for b in returned] == [(b["thinking"], b["signature"]) for b in thinking]
    assert all(b["signature"] for b in returned)
    if model == "via-anthropic":
        _check_upstream(clients_sim, calls[1])

    assert run.destinations, "strace saw no connect at all: the trace is not working"
    assert run.outside() == [], f"Claude Code reached outside loopback: {run.outside()}"
    save_fixture(f"claude_code_{model}", run.exchanges)


def test_claude_code_plain_answer_and_what_it_sends(claude_bin: Path, proxy: RecordingProxy, tmp_path: Path) -> None:
    """A one-turn answer; pins down the request shape the gateway must accept from Claude Code."""
    run = _claude(claude_bin, proxy, tmp_path, "via-anthropic", "Repeat: modelyard says hello")

    assert run.returncode == 0, run.describe()
    assert json.loads(run.stdout)["result"] == "modelyard says hello", run.describe()
    call = next(e for e in run.exchanges if e.path.startswith("/v1/messages"))
    body = call.json()
    assert call.status == 200
    assert body["max_tokens"] > 0 and body["tools"], body.keys()
    assert "claude-code-20250219" in (call.header("anthropic-beta") or "")
    assert run.outside() == [], f"Claude Code reached outside loopback: {run.outside()}"
    save_fixture("claude_code_plain", run.exchanges)


def test_claude_code_default_model_is_served_by_an_alias(
    claude_bin: Path, proxy: RecordingProxy, tmp_path: Path
) -> None:
    """No --model: Claude Code asks for its own default model name; the `claude-*` alias serves it."""
    run = _claude(claude_bin, proxy, tmp_path, None, "Repeat: served by an alias")

    assert run.returncode == 0, run.describe()
    assert json.loads(run.stdout)["result"] == "served by an alias", run.describe()
    call = next(e for e in run.exchanges if e.path.startswith("/v1/messages"))
    assert call.json()["model"].startswith("claude-"), call.json()["model"]
    assert call.status == 200, call.response_body[:500]
    assert run.outside() == [], f"Claude Code reached outside loopback: {run.outside()}"
