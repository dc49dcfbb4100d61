"""The cloud SDKs are optional extras (`aws`, `gcp`, `azure`): without them the gateway, the simulator and
`modelyard demo` still import and run, and a config naming a cloud provider says what to install. (A fresh
`pip install -e .` once failed `modelyard demo` because the simulator imported botocore at module level.)"""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCK = """
import sys
for name in ("botocore", "boto3", "google", "google.auth", "google.oauth2", "azure", "azure.identity", "azure.core"):
    sys.modules[name] = None  # an import of any of them now fails, as in an install without the extras
"""


def run(code: str) -> subprocess.CompletedProcess[str]:
    script = BLOCK + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


def test_the_gateway_and_the_simulator_run_without_the_cloud_extras() -> None:
    done = run(
        """
        import httpx
        from modelyard.config.demo import demo_config
        from modelyard.server.background import BackgroundServer
        from modelyard.server.factory import create_app
        from modelyard.sim.server import SimServer

        with SimServer(instant=True) as sim:
            with BackgroundServer(create_app(demo_config(sim.url))) as gateway:
                answer = httpx.post(
                    gateway.url + "/v1/chat/completions",
                    json={"model": "smart", "messages": [{"role": "user", "content": "Repeat: fine"}]},
                    timeout=30,
                )
                print(answer.status_code)
        """
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "200"


def test_a_cloud_provider_without_its_extra_says_what_to_install() -> None:
    done = run(
        """
        from modelyard.config.loader import ConfigError, parse_config

        try:
            parse_config("deployments:\\n  - {name: b, provider: bedrock, model: m, options: {region: us-east-1}}\\n")
        except ConfigError as exc:
            print(exc)
        """
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pip install 'modelyard[aws]'" in done.stdout
