"""Codex CLI (`codex exec`, npm) completes a task that needs its shell tool, through the gateway's
`/v1/responses`, on loopback.

Codex speaks only the Responses API (`wire_api = "responses"`; "chat" is refused by current versions). The
prompt names Codex's `exec_command` tool with its arguments (the simulator's convention), Codex runs
`cat note.txt` in its read-only sandbox and sends the output back as a `function_call_output`; the secret
word, which only exists in the file, must reach Codex's last message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modelyard.testing.recorder import RecordingProxy
from tests.e2e.clients.conftest import ClientRun, codex_config, run_client, save_fixture

SECRET = "MANGO-2208"

pytestmark = pytest.mark.usefixtures("strace_ok")


def _codex(codex_bin: Path, proxy: RecordingProxy, tmp_path: Path, model: str, prompt: str) -> tuple[ClientRun, str]:
    home = tmp_path / "codex-home"
    home.mkdir()
    (home / "config.toml").write_text(codex_config(proxy.url, model), encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    last = tmp_path / "last-message.txt"
    env = {"HOME": str(home), "CODEX_HOME": str(home), "MODELYARD_API_KEY": "sk-client-test"}
    command = [
        str(codex_bin),
        "exec",
        "--strict-config",
        "--ephemeral",
        "--skip-git-repo-check",
        "--output-last-message",
        str(last),
        prompt,
    ]
    run = run_client(command, env=env, cwd=work, proxy=proxy, trace=tmp_path / "strace.log")
    return run, last.read_text(encoding="utf-8") if last.exists() else ""


def _items(body: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    items = body["input"]
    return [item for item in items if isinstance(item, dict) and item.get("type") == kind]


@pytest.mark.parametrize("model", ["via-responses", "via-openai", "via-anthropic"])
def test_codex_exec_runs_a_command_through_the_gateway(
    codex_bin: Path, proxy: RecordingProxy, tmp_path: Path, model: str
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "note.txt").write_text(f"The secret word is {SECRET}.\n", encoding="utf-8")
    prompt = f"Use exec_command {json.dumps({'cmd': 'cat note.txt'})} and tell me the secret word."

    run, last = _codex(codex_bin, proxy, tmp_path, model, prompt)

    calls = [e for e in run.exchanges if e.method == "POST" and e.path == "/v1/responses"]
    assert calls, run.describe()
    assert all(e.status == 200 for e in calls), run.describe()
    assert run.returncode == 0, run.describe()
    assert len(calls) >= 2, run.describe()
    first, second = calls[0].json(), calls[1].json()
    assert first["model"] == model and first["stream"] is True and first["store"] is False
    # The second request carries the call the gateway streamed and the command's output.
    function_calls = _items(second, "function_call")
    assert [c["name"] for c in function_calls] == ["exec_command"], run.describe()
    assert json.loads(function_calls[0]["arguments"]) == {"cmd": "cat note.txt"}
    outputs = _items(second, "function_call_output")
    assert outputs and outputs[0]["call_id"] == function_calls[0]["call_id"]
    assert SECRET in json.dumps(outputs), json.dumps(outputs)[:2000]
    assert SECRET in last, run.describe()

    assert run.destinations, "strace saw no connect at all: the trace is not working"
    assert run.outside() == [], f"Codex reached outside loopback: {run.outside()}"
    save_fixture(f"codex_{model}", run.exchanges)


def test_codex_plain_answer(codex_bin: Path, proxy: RecordingProxy, tmp_path: Path) -> None:
    """One turn, no tool: the smallest thing Codex can do through the gateway."""
    run, last = _codex(codex_bin, proxy, tmp_path, "via-openai", "Repeat: modelyard says hello")

    assert run.returncode == 0, run.describe()
    assert last.strip() == "modelyard says hello", run.describe()
    assert run.outside() == [], f"Codex reached outside loopback: {run.outside()}"
    save_fixture("codex_plain", run.exchanges)
