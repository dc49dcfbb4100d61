"""Real clients nobody here wrote, against the real gateway over the simulator, on loopback only.

The npm clients are installed at pinned versions into a cache folder (`MODELYARD_NPM_CLIENTS`, default
`~/.cache/modelyard/npm-clients`) on first use, about ten seconds; without `npm` or its registry the tests
that need them skip and say why. Each client runs with every phone-home switch off, in a throw-away home,
under strace (`modelyard.testing.loopback`), behind a `RecordingProxy` that keeps what it sent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelyard.config.loader import parse_config
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.sim.server import SimServer
from modelyard.testing.loopback import (
    Destination,
    outside_loopback,
    strace_available,
    strace_command,
    traced_destinations,
)
from modelyard.testing.recorder import Exchange, RecordingProxy
from tests.e2e.conftest import gateway_yaml

#: The versions these tests were written against (docs/clients.md); bump together with the fixtures.
NPM_CLIENTS = {
    "claude": ("@anthropic-ai/claude-code", "2.1.197"),
    "codex": ("@openai/codex", "0.171.0"),
}
FIXTURES = Path(__file__).parent / "fixtures"
#: `MODELYARD_RECORD_CLIENT_FIXTURES=1 pytest tests/e2e/clients` rewrites fixtures/ from the real clients' runs.
RECORD = os.environ.get("MODELYARD_RECORD_CLIENT_FIXTURES") == "1"
#: A client run's wall-clock limit: a healthy one takes 1-5 s here.
CLIENT_TIMEOUT_S = 60

#: Claude Code's switches for everything that is not the model call (docs: "Environment variables").
CLAUDE_OFFLINE_ENV = {
    "DISABLE_TELEMETRY": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_BUG_COMMAND": "1",
    "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY": "1",
    # A failing gateway fails the test at once instead of after minutes of backoff.
    "CLAUDE_CODE_MAX_RETRIES": "0",
    "API_TIMEOUT_MS": "30000",
}


def codex_config(base_url: str, model: str) -> str:
    """A CODEX_HOME config.toml: the gateway as the only provider, and nothing else reaching out.

    Without the [features] switches Codex 0.171 resolves api.github.com and chatgpt.com at start (plugin
    marketplace sync, remote plugins, apps) even with analytics and the update check off.
    """
    off = (
        "plugins",
        "remote_plugin",
        "plugin_sharing",
        "apps",
        "in_app_updates",
        "tool_suggest",
        "skill_mcp_dependency_install",
        "daemon_auto_start",
        "image_generation",
        "browser_use",
        "browser_use_external",
        "computer_use",
    )
    features = "\n".join(f"{name} = false" for name in off)
    return f"""model = "{model}"
model_provider = "modelyard"
check_for_update_on_startup = false
approval_policy = "never"
sandbox_mode = "read-only"

[model_providers.modelyard]
name = "modelyard"
base_url = "{base_url}/v1"
env_key = "MODELYARD_API_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0

[analytics]
enabled = false

[feedback]
enabled = false

[otel]
exporter = "none"
trace_exporter = "none"
metrics_exporter = "none"

[features]
{features}
"""


def _npm_reason() -> str | None:
    if shutil.which("npm") is None:
        return "npm is not installed: cannot install the pinned Claude Code / Codex CLI"
    try:
        ping = subprocess.run(["npm", "ping"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"npm registry not reachable: {exc}"
    if ping.returncode != 0:
        return f"npm registry not reachable: {ping.stderr.decode(errors='replace')[-200:]}"
    return None


def npm_client(name: str) -> Path:
    """The pinned client's executable, installed into the cache on first use (skips when npm cannot)."""
    package, version = NPM_CLIENTS[name]
    root = Path(os.environ.get("MODELYARD_NPM_CLIENTS", Path.home() / ".cache" / "modelyard" / "npm-clients"))
    prefix = root / f"{package.replace('/', '+')}@{version}"
    binary = prefix / "node_modules" / ".bin" / name
    if binary.exists():
        return binary
    reason = _npm_reason()
    if reason is not None:
        pytest.skip(reason)
    prefix.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--no-save", f"{package}@{version}"],
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"npm install {package}@{version} failed: {done.stderr.decode(errors='replace')}"
    assert binary.exists(), f"npm installed {package}@{version} but {binary} is missing"
    return binary


@pytest.fixture(scope="session")
def strace_ok() -> None:
    reason = strace_available()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def claude_bin() -> Path:
    return npm_client("claude")


@pytest.fixture(scope="session")
def codex_bin() -> Path:
    return npm_client("codex")


#: Agents ask for their own default model names (Claude Code 2.1.197: `claude-opus-4-8`); aliases serve them.
CLIENT_ALIASES = 'aliases:\n  "claude-*": via-anthropic\n  "gpt-*": via-openai\n'


def clients_yaml(sim_url: str) -> str:
    """The e2e gateway's config (a deployment per wire format over the simulator), a deployment that speaks
    the Responses API (`via-responses`: pass-through), and the clients' default names as aliases."""
    responses = (
        f'  - {{name: small@responses, provider: openai, model: sim-small, api_base: "{sim_url}/v1", '
        "api_key: sk-test-responses-secret, price: {input: 0.1, output: 0.4}, options: {responses_api: true}, "
        "timeouts: {connect: 2, first_token: 5, total: 10}}\n"
    )
    text = gateway_yaml(sim_url, CLIENT_ALIASES)
    return text.replace("\nmodels:\n", f"\n{responses}models:\n  via-responses: {{candidates: [small@responses]}}\n", 1)


#: The simulator's seed fixes its thinking-signature secret: the recorded fixtures' signed thinking blocks
#: replay only against a simulator with the seed they were recorded with.
SIM_SEED = 11


@pytest.fixture(scope="session")
def clients_sim() -> Iterator[SimServer]:
    with SimServer(seed=SIM_SEED, instant=True) as server:
        yield server


@pytest.fixture(scope="session")
def clients_gateway(clients_sim: SimServer) -> Iterator[BackgroundServer]:
    """The gateway the client tests talk to (through a recording proxy): `clients_yaml`."""
    config = parse_config(clients_yaml(clients_sim.url), source="clients.yaml")
    with BackgroundServer(create_app(config)) as server:
        yield server


@pytest.fixture
def proxy(clients_gateway: BackgroundServer) -> Iterator[RecordingProxy]:
    """A recording proxy in front of the clients' gateway: the client talks to it."""
    with RecordingProxy(clients_gateway.url) as recorder:
        yield recorder


@dataclass
class ClientRun:
    """A finished client process: its output, what it sent, and where its sockets went."""

    returncode: int
    stdout: str
    stderr: str
    exchanges: list[Exchange]
    destinations: list[Destination]

    def outside(self) -> list[Destination]:
        return outside_loopback(self.destinations)

    def describe(self) -> str:
        sent = [f"{e.method} {e.path} -> {e.status}" for e in self.exchanges]
        return f"rc={self.returncode}\nsent={sent}\nstdout={self.stdout[-3000:]}\nstderr={self.stderr[-3000:]}"


def run_client(command: list[str], *, env: dict[str, str], cwd: Path, proxy: RecordingProxy, trace: Path) -> ClientRun:
    """`command` under strace with exactly `env` (plus PATH), in `cwd`, stdin closed."""
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", **env}
    done = subprocess.run(
        strace_command(command, trace),
        env=full_env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=CLIENT_TIMEOUT_S,
        check=False,
    )
    return ClientRun(
        done.returncode,
        done.stdout.decode(errors="replace"),
        done.stderr.decode(errors="replace"),
        proxy.snapshot(),
        traced_destinations(trace),
    )


def save_fixture(name: str, exchanges: list[Exchange]) -> None:
    """Write a real run's requests to fixtures/<name>.jsonl (only with MODELYARD_RECORD_CLIENT_FIXTURES=1)."""
    if not RECORD:
        return
    FIXTURES.mkdir(exist_ok=True)
    with (FIXTURES / f"{name}.jsonl").open("w", encoding="utf-8") as fh:
        for ex in exchanges:
            row = {"method": ex.method, "path": ex.path, "headers": ex.headers, "body": ex.body, "status": ex.status}
            fh.write(json.dumps(row) + "\n")
