"""A local Ray started by `modelyard batch --engine ray` sends nothing off the machine.

Every process of the run (the CLI, Ray's GCS, raylet, dashboard, agents and the workers) is traced with strace:
every TCP connection goes to loopback. Ray's dashboard asks the clouds' metadata addresses which cloud it runs
on even with usage stats off; the engine points that plain-HTTP probe at a closed loopback port. The one
non-loopback `connect` left is Ray's agent finding its address by connecting a UDP socket to 8.8.8.8:53, which
sends no packet; it is allowed here only as a UDP socket.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[3]
WORKFLOW = """
schema: modelyard.workflow/v1
name: one
inputs: {ticket: string}
steps:
  classify: {model: fast, prompt: "Classify {{ inputs.ticket }}"}
outputs: {label: "{{ classify }}"}
"""
_SOCKET = re.compile(r"^(\d+) +socket\((AF_INET6?), (SOCK_\w+).*= (\d+)$")
_CONNECT = re.compile(r"^(\d+) +connect\((\d+), \{sa_family=(AF_INET6?), sin6?_port=htons\((\d+)\), (.*?)\}")
_ADDRESS = re.compile(r'inet_addr\("([0-9.]+)"\)|inet_pton\(AF_INET6, "([^"]+)"')
_LOOPBACK = ("127.", "::1", "::ffff:127.")


def outside_connects(trace: str) -> list[str]:
    """Connects to a non-loopback address, each with its socket's type (from the same pid's socket() call)."""
    kinds: dict[tuple[str, str], str] = {}
    found: list[str] = []
    for line in trace.splitlines():
        if match := _SOCKET.match(line):
            kinds[(match[1], match[4])] = match[3]
        elif match := _CONNECT.match(line):
            address = _ADDRESS.search(match[5])
            host = (address[1] or address[2]) if address else "?"
            if not host.startswith(_LOOPBACK):
                found.append(f"{kinds.get((match[1], match[2]), '?')} {host}:{match[4]}")
    return found


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed (apt-get install strace)")
def test_a_local_ray_batch_connects_to_nothing_beyond_loopback(tmp_path: Path) -> None:
    workflow = tmp_path / "one.yaml"
    workflow.write_text(WORKFLOW, encoding="utf-8")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"ticket": f"t{i}"}) + "\n" for i in range(6)), encoding="utf-8")
    trace = tmp_path / "connect.trace"
    env = {**os.environ, "MODELYARD_RUNS_DB": str(tmp_path / "runs.db")}
    out = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "modelyard.cli.main", "batch", str(workflow), "--inputs", str(rows),
               "--out", str(out), "--engine", "ray", "--backend", "scripted", "--no-progress"]  # fmt: skip
    done = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=socket,connect", "-o", str(trace), *command],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(out.read_text().splitlines()) == 6
    text = trace.read_text()
    assert text.count("connect(") > 20  # the trace saw Ray's processes, not only the CLI
    outside = outside_connects(text)
    assert [c for c in outside if not c.startswith("SOCK_DGRAM")] == [], outside
    assert set(outside) <= {"SOCK_DGRAM 8.8.8.8:53"}, outside
