"""The cluster harness's pure parts (modelyard.testing.cluster): the HAProxy config it writes, the default
gateway config, and the clear error when HAProxy is missing. The processes themselves: tests/e2e/test_cluster.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from modelyard.config.loader import parse_config
from modelyard.testing import cluster
from modelyard.testing.cluster import ClusterError, default_config, find_haproxy, haproxy_config

ENV = {
    "MODELYARD_SIM_URL": "http://127.0.0.1:9",
    "MODELYARD_REDIS_URL": "redis://127.0.0.1:6379/0",
    "MODELYARD_STATE_PREFIX": "p",
    "MODELYARD_SPEND_STORE": "postgresql://x@127.0.0.1/test?schema=s",
    "MODELYARD_SPOOL_DIR": "/tmp/spool",
}


def test_haproxy_config_balances_every_replica_on_readiness(tmp_path: Path) -> None:
    text = haproxy_config(4100, [4101, 4102, 4103], socket_path=tmp_path / "s.sock", stats_port=4104)
    assert "bind 127.0.0.1:4100" in text and "bind 127.0.0.1:4104" in text
    for i, port in enumerate((4101, 4102, 4103)):
        assert f"server r{i} 127.0.0.1:{port} check" in text
    assert "option httpchk GET /health/ready" in text and "balance roundrobin" in text
    assert "option redispatch" in text  # a refused connection goes to another replica
    assert f"stats socket {tmp_path / 's.sock'}" in text


@pytest.mark.skipif(shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists(), reason="no haproxy")
def test_haproxy_accepts_the_config_the_harness_writes(tmp_path: Path) -> None:
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(haproxy_config(4100, [4101, 4102], socket_path=tmp_path / "s.sock"))
    check = subprocess.run([find_haproxy(), "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


def test_missing_haproxy_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster.shutil, "which", lambda name: None)
    monkeypatch.setattr(cluster.os, "access", lambda path, mode: False)
    with pytest.raises(ClusterError, match="apt-get install haproxy"):
        find_haproxy()
    with pytest.raises(ClusterError, match="HAProxy is not installed"):
        cluster.Cluster(redis_url=None, postgres_dsn=None)


@pytest.mark.parametrize(("redis", "postgres"), [(True, True), (False, False)])
def test_default_config_loads(redis: bool, postgres: bool) -> None:
    config = parse_config(default_config(redis=redis, postgres=postgres), source="cluster.yaml", env=ENV)
    assert {"chat", "chat-openai"} <= set(config.models)
    assert (config.state.redis_url is not None) is redis
    assert config.state.prefix == ("p" if redis else "modelyard")
    assert config.spend.spool_dir == "/tmp/spool"
    assert config.spend.store == (ENV["MODELYARD_SPEND_STORE"] if postgres else ":memory:")
