"""Multi-node `--engine ray` on one machine: kill a worker node mid-run, every row still comes out exactly once.

What it does (issue 18's Ray acceptance test; run by hand or in a nightly job, ~1-2 minutes on 2 cores):

1. a two-node Ray cluster on loopback: a head of 2 CPUs and a second node of 2 CPUs, each with its own raylet,
   object store, temp dir and ports (`ray.cluster_utils.Cluster`, see below);
2. the simulator in its own process (`modelyard sim`, ~100 ms per answer so calls are in flight at the kill),
   a gateway config pointing at it, a PostgreSQL batch store (a schema of its own, dropped at the end);
3. `modelyard batch ... --engine ray --ray-address <head>` over 2,000 rows (4 actors: 2 per node);
4. once ~35% of the rows are stored, SIGKILL of the second node's raylet and every process under it (its
   actors): the node is gone for good, the batch carries on with the head's 2 actors;
5. checks: the output has every row exactly once, every row succeeded, the store agrees, and the extra
   upstream calls (simulator requests - rows) are at most the killed node's calls in flight at the kill,
   counted as its open connections to the simulator (an in-flight HTTP/1.1 call holds one; idle pooled
   ones only make the bound looser). Prints the numbers. Tears everything down, also on failure: the
   cluster's own processes (`Cluster.shutdown`, not `ray stop`, which would end every Ray on the machine).

Why `ray.cluster_utils.Cluster` and not two `ray start`: on Linux, `ray start --node-ip-address 127.0.0.1`
replaces loopback by the machine's routable address and listens on every interface; the switch that keeps a
node on loopback (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) makes `ray start --address` refuse to add a second
node. `Cluster` starts the same processes as `ray start` (a GCS, and per node a raylet, object store and
agents: real separate processes, so SIGKILL of one node's raylet is a real node loss) with both nodes on
127.0.0.1. The batch itself runs through the real CLI, which joins the cluster by its address.

    python scripts/ray_batch_cluster.py [--rows 2000] [--concurrency 32] [--kill-at 0.35]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

# Before Ray is imported: no usage statistics, and every node on loopback (see the docstring).
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

from ray.cluster_utils import Cluster

from modelyard.batch.store import open_batch_store
from modelyard.testing.process import start_sim_process

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "modelyard.cli.main"]
PG = os.environ.get("MODELYARD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
WORKFLOW = """
schema: modelyard.workflow/v1
name: label
inputs: {ticket: string}
steps:
  classify: {model: labeller, prompt: "Label this support ticket: {{ inputs.ticket }}", max_tokens: 8}
outputs: {label: "{{ classify }}"}
"""
FLEET = """
models:
  - name: sim-cluster
    price: {input: 0.1, output: 0.4}
    ttft_ms: 100
    tokens_per_second: 2000
    output_tokens: 6
"""
#: Faster node-death detection than Ray's default (the GCS marks a silent raylet dead after 3 missed checks).
SYSTEM_CONFIG = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}


def start_sim(base: Path) -> tuple[subprocess.Popen[bytes], int]:
    fleet = base / "fleet.yaml"
    fleet.write_text(FLEET, encoding="utf-8")
    process, port = start_sim_process(fleet, cwd=ROOT)
    return process, port


def sim_requests(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_sim/stats", timeout=10) as answer:
        return int(json.load(answer)["models"]["sim-cluster"]["requests"])


def write_files(base: Path, rows: int, sim_port: int) -> dict[str, Path]:
    config = base / "gateway.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            deployments:
              - {{name: cluster, provider: openai, model: sim-cluster, api_base: "http://127.0.0.1:{sim_port}/v1",
                 api_key: sim, price: {{input: 0.1, output: 0.4}},
                 timeouts: {{connect: 2, first_token: 20, total: 30}}}}
            models:
              labeller: {{candidates: [cluster]}}
            """
        ),
        encoding="utf-8",
    )
    workflow = base / "label.yaml"
    workflow.write_text(WORKFLOW, encoding="utf-8")
    inputs = base / "rows.jsonl"
    inputs.write_text("".join(json.dumps({"ticket": f"ticket {i}: it crashes on start"}) + "\n" for i in range(rows)))
    return {"config": config, "workflow": workflow, "rows": inputs}


def node_processes(node: Any) -> list[Any]:
    """The node's raylet and everything under it (its workers, i.e. the batch's actors there, and agents)."""
    import psutil  # vendored by Ray (ray/thirdparty_files): importable once Ray is

    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    return [raylet, *raylet.children(recursive=True)]


def calls_in_flight(processes: list[Any], sim_port: int) -> int:
    """Open connections from these processes to the simulator: an upper bound of their calls in flight."""
    import psutil

    pids = {p.pid for p in processes}
    return sum(
        1
        for c in psutil.net_connections(kind="tcp")
        if c.pid in pids and c.raddr and c.raddr.port == sim_port and c.status == psutil.CONN_ESTABLISHED
    )


def stored_rows(store: str, batch_id: str) -> int:
    opened = open_batch_store(store)
    try:
        return len(opened.done_rows(batch_id))
    finally:
        opened.close()


def kill_node(node: Any, sim_port: int) -> tuple[int, int]:
    """SIGKILL the node's raylet and its processes at once; (processes killed, their calls in flight)."""
    processes = node_processes(node)
    in_flight = calls_in_flight(processes, sim_port)
    for process in processes:
        try:
            os.kill(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(processes), in_flight


def run(args: argparse.Namespace, base: Path, cluster: Cluster, sim_port: int, store: str) -> int:
    files = write_files(base, args.rows, sim_port)
    second = cluster.add_node(num_cpus=2)
    batch_id = f"b-cluster-{uuid.uuid4().hex[:8]}"
    out, report = base / "out.jsonl", base / "report.json"
    command = [
        *CLI, "batch", str(files["workflow"]), "--inputs", str(files["rows"]), "--out", str(out),
        "--engine", "ray", "--ray-address", cluster.address, "--store", store, "--config", str(files["config"]),
        "--concurrency", str(args.concurrency), "--batch-id", batch_id, "--no-progress", "--json", str(report),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    before = sim_requests(sim_port)
    started = time.monotonic()
    driver = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed: tuple[int, int] | None = None
    done_at_kill = 0
    while driver.poll() is None:
        time.sleep(0.1)
        done = stored_rows(store, batch_id) if killed is None else 0
        if killed is None and done >= args.rows * args.kill_at:
            killed, done_at_kill = kill_node(second, sim_port), done
            print(f"killed the second node at {done} stored rows: {killed[0]} processes, {killed[1]} calls in flight")
    output, _ = driver.communicate()
    wall = time.monotonic() - started
    print(output[-3000:])
    if killed is None:
        raise AssertionError("the batch finished before the node could be killed: use more rows")
    return check(args, store, batch_id, out, report, driver.returncode, sim_requests(sim_port) - before, killed, wall,
                 done_at_kill)  # fmt: skip


def check(
    args: argparse.Namespace,
    store: str,
    batch_id: str,
    out: Path,
    report: Path,
    code: int,
    calls: int,
    killed: tuple[int, int],
    wall: float,
    done_at_kill: int,
) -> int:
    assert code == 0, f"modelyard batch exited with {code}"
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [line["row"] for line in lines]
    assert sorted(rows) == list(range(args.rows)), f"{len(rows)} output lines, {len(set(rows))} distinct rows"
    assert {line["status"] for line in lines} == {"succeeded"}
    assert stored_rows(store, batch_id) == args.rows
    extra = calls - args.rows
    summary = json.loads(report.read_text(encoding="utf-8"))
    print(
        f"rows: {args.rows} in the output, each exactly once; killed at {done_at_kill} stored rows\n"
        f"upstream calls: {calls} (extra {extra}; the killed node had {killed[1]} calls in flight)\n"
        f"wall: {wall:.1f} s including Ray's start of the driver; the batch's own rate: "
        f"{summary.get('rows_per_s', 0):.1f} rows/s"
    )
    assert 0 <= extra <= killed[1], f"{extra} extra upstream calls, more than the {killed[1]} in flight"
    print("OK")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--kill-at", type=float, default=0.35, help="Fraction of rows stored before the kill.")
    args = parser.parse_args()
    store = f"{PG}?schema=raycluster_{uuid.uuid4().hex[:10]}"
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        sim, sim_port = start_sim(base)
        cluster: Cluster | None = None
        try:
            cluster = Cluster(
                initialize_head=True,
                head_node_args={"num_cpus": 2, "node_ip_address": "127.0.0.1", "_system_config": SYSTEM_CONFIG,
                                "include_dashboard": False},
            )  # fmt: skip
            print(f"Ray cluster at {cluster.address}: a head and a second node, 2 CPUs each, on loopback")
            return run(args, base, cluster, sim_port, store)
        finally:
            if cluster is not None:
                cluster.shutdown()
            sim.terminate()
            sim.wait(10)
            dropper: Any = open_batch_store(store)
            dropper.drop()
            dropper.close()


if __name__ == "__main__":
    sys.exit(main())
