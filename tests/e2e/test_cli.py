"""The CLI as a user runs it: demo, check, route --explain, serve (as a real process), sim."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "modelyard.cli.main"]
ENV = {**os.environ, "COLUMNS": "200"}


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=ENV, cwd=ROOT)


def test_demo_runs_end_to_end_and_reports_who_served_what():
    started = time.monotonic()
    done = run("demo")
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 60
    out = done.stdout
    assert "who served what" in out and "16 requests" in out and "16 ok" in out and "Responses API in" in out
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert len(rows) == 16
    assert any("large@anthropic" in r and "anthropic" in r for r in rows)  # the Anthropic wire
    assert any("medium@gemini" in r for r in rows)  # the Gemini wire
    failover = next(r for r in rows if "failover" in r)
    assert "large@openai" in failover and "│ 3 " in failover  # 503, one retry, then the backup
    assert "total cost $" in out


def test_check_validates_and_reports_errors_with_file_and_line(tmp_path):
    ok = run("check", "--config", "examples/modelyard.yaml")
    assert ok.returncode == 0 and "OK" in ok.stdout and "16 deployments, 13 models" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("deployments:\n  - name: a\n    provider: openai\n    model: m\nmodels:\n  x: {candidates: [b]}\n")
    failed = run("check", "--config", str(bad))
    assert failed.returncode == 2
    assert f"{bad}:6: models.x.candidates[0]: unknown deployment 'b'" in failed.stderr.replace("\n", "")


def test_route_explains_without_calling_anything():
    done = run(
        "route",
        "--config",
        "examples/modelyard.yaml",
        "--model",
        "smart",
        "--prompt",
        "Prove it",
        "--max-tokens",
        "500",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    explained = json.loads(done.stdout)
    decisions = {c["deployment"]: c["decision"] for c in explained["candidates"]}
    assert decisions == {"sonnet@anthropic": "chosen", "gpt-4o@openai": "skipped", "flash@gemini": "skipped"}
    table = run(
        "route", "--config", "examples/modelyard.yaml", "--model", "agent", "--task", "coding", "--complexity", "high"
    )
    assert "rule: task=['reasoning', 'coding'], complexity=high" in table.stdout.replace("\n", " ")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_sim_and_serve_as_processes(tmp_path):
    sim_port, gw_port = _free_port(), _free_port()
    sim = subprocess.Popen(
        [*CLI, "sim", "--port", str(sim_port)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    config = tmp_path / "modelyard.yaml"
    config.write_text(f"""
deployments:
  - {{name: small, provider: openai, model: sim-small, api_base: "http://127.0.0.1:{sim_port}/v1"}}
models:
  fast: {{candidates: [small]}}
""")
    gateway = subprocess.Popen(
        [*CLI, "serve", "--config", str(config), "--port", str(gw_port), "--workers", "2"],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{gw_port}/health/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the gateway did not become ready"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{gw_port}/v1", api_key="x")
        answer = client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "Repeat: hi"}])
        assert answer.choices[0].message.content == "hi"
    finally:
        gateway.terminate()
        sim.terminate()
        gateway.wait(timeout=15)
        sim.wait(timeout=15)
    assert "OPEN MODE" in (gateway.stderr.read() if gateway.stderr else "")  # said loudly at start
