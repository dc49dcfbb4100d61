"""Instructions per request of the whole gateway process, before/after: a measure that machine noise cannot move.

    python bench/instructions.py --base cd668a9                 # chat completions, 500 vs 1500 requests
    python bench/instructions.py --versus-path /v1/responses     # the Responses codec next to chat, this checkout
    python bench/instructions.py --base HEAD --head-src build/compiled   # pure Python vs the compiled hot path
    python bench/instructions.py --base HEAD --stream            # a streamed answer (wrk's stream body), per stream
    python bench/instructions.py --features [--stream]           # the floor (pass-through), everything on, each off

wrk's requests/s on a shared 2-core VM moved ±30% between identical runs (docs/benchmarks.md); callgrind counts
the instructions the server process executes, repeatable to a fraction of a percent. Each side is `modelyard serve`
with everything on (bench/gateway_bench.py's config: a key with RPM/TPM limits and a budget, the cost strategy, the
SQLite spend log, /metrics) under `valgrind --tool=callgrind`, sent N sequential keep-alive requests after a
warm-up; the per-request figure is the difference between an N=1500 and an N=500 run over 1000, so start-up and
shutdown cancel out. The whole process counts: uvicorn, httptools, asyncio, our code, the spend writer.
"""

from __future__ import annotations

import argparse
import http.client
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import feature_costs as fc
import gateway_bench as gb
from ab_gateway import worktree

CHAT = (
    b'{"model":"bench","messages":[{"role":"system","content":"You are terse."},'
    b'{"role":"user","content":"Say hello in five words."}],"max_tokens":16,"temperature":0}'
)
RESPONSES = (
    b'{"model":"bench","instructions":"You are terse.","input":"Say hello in five words.",'
    b'"max_output_tokens":16,"temperature":0,"store":false}'
)
#: What bench/chat.lua sends with STREAM=1: the upstream answers 8 content deltas, a finish, usage and [DONE].
CHAT_STREAM = CHAT[:-1] + b',"stream":true,"stream_options":{"include_usage":true}}'
WARM_UP = 100


#: `--features`: the rows of bench/feature_costs.py, each (name, edit of the config, requests sent with the master
#: key and no virtual key in the store: no key admission, budget or key RPM/TPM; open mode once `access:` is gone).
FEATURE_ROWS: list[tuple[str, fc.Edit | None, bool]] = [
    ("everything on", None, False),
    ("no virtual key", None, True),
    *[(name, edit, False) for name, edit in fc.ROWS[1:]],
    ("every feature off", fc.every_feature_off, True),
]


def instructions(
    src: Path | None,
    upstream: str,
    tmp: Path,
    path: str,
    count: int,
    name: str,
    stream: bool = False,
    edit: fc.Edit | None = None,
    master: bool = False,
) -> int:
    contender = gb.modelyard(
        upstream,
        tmp,
        src=src,
        name=f"{name}-{count}",
        prefix=callgrind(tmp / f"callgrind.{name}.{count}"),
        edit=edit,
        make_key=not master,
    )
    slug = re.sub(r"\W+", "-", f"{name}-{count}")  # gateway_bench names the server's log after its label
    return sent(contender, path, body(path, stream), count, name, tmp / f"{slug}.log")


def floor_instructions(upstream: str, tmp: Path, path: str, count: int, stream: bool = False) -> int:
    """The pass-through (bench/passthrough.py under uvicorn, the issue's floor) under callgrind, sent `count`
    requests after the warm-up: the same body and client as a modelyard side."""
    contender = gb.passthrough(upstream, tmp, name=f"floor-{count}", prefix=callgrind(tmp / f"callgrind.floor.{count}"))
    return sent(contender, path, body(path, stream), count, "floor", tmp / f"floor-{count}.log")


def callgrind(out: Path) -> list[str]:
    """The command prefix that runs a server under callgrind, its profile written to `out`."""
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]


def body(path: str, stream: bool) -> bytes:
    """What every side is sent on `path`."""
    return RESPONSES if path == "/v1/responses" else CHAT_STREAM if stream else CHAT


def per_unit(measure: Callable[[int], int], low: int, high: int) -> float:
    """Instructions per request (or stream): the difference between a `high` and a `low` run over their
    difference, so that start-up and shutdown cancel out."""
    return (measure(high) - measure(low)) / (high - low)


def sent(contender: gb.Contender, path: str, body: bytes, count: int, name: str, log_path: Path) -> int:
    """Send the warm-up and `count` sequential keep-alive requests, stop the server, and read callgrind's
    total from its log."""
    try:
        where = urlsplit(contender.url)
        conn = http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port, timeout=60)
        headers = {"content-type": "application/json", "authorization": f"Bearer {contender.key}"}
        for _ in range(WARM_UP + count):
            conn.request("POST", path, body, headers)
            answer = conn.getresponse()
            answer.read()
            if answer.status != 200:
                raise SystemExit(f"{name}: {path} answered {answer.status}")
        conn.close()
    finally:
        contender.stop()
    log = log_path.read_text(errors="replace")
    found = re.findall(r"Collected : (\d+)", log)
    if not found:
        raise SystemExit(f"{name}: callgrind wrote no total (server log: {log[-2000:]})")
    return int(found[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", help="git ref of the 'before' side (same path)")
    parser.add_argument("--path", default="/v1/chat/completions")
    parser.add_argument("--versus-path", help="instead of --base: this checkout on another path (/v1/responses)")
    parser.add_argument("--head-src", type=Path, default=None, help="with --base: the head side from this directory")
    parser.add_argument("--stream", action="store_true", help="streamed chat completions (per stream)")
    parser.add_argument("--features", action="store_true", help="this tree, everything on and each feature off")
    parser.add_argument("--low", type=int, default=500)
    parser.add_argument("--high", type=int, default=1500)
    args = parser.parse_args()
    if args.features:
        features(args.path, args.stream, args.low, args.high)
        return
    if (args.base is None) == (args.versus_path is None):
        parser.error("give --base REF, --versus-path PATH or --features")
    with tempfile.TemporaryDirectory(prefix="modelyard-ir-") as tmp_name:
        tmp = Path(tmp_name)
        if args.base is not None:
            head_src = args.head_src.resolve() if args.head_src else None
            sides = [("base", worktree(args.base, tmp / "base"), args.path), ("head", head_src, args.path)]
        else:
            sides = [("first", None, args.path), ("second", None, args.versus_path)]
        upstream, upstream_proc = gb.start_upstream(0)
        per_request = {}
        try:
            for name, src, path in sides:
                measure = partial(instructions, src, upstream, tmp, path, name=name, stream=args.stream)
                per_request[name] = per_unit(measure, args.low, args.high)
                print(f"{name}: {per_request[name]:,.0f} instructions per request ({path})", flush=True)
        finally:
            upstream_proc.terminate()
            if args.base is not None:
                subprocess.run(
                    ["git", "-C", str(gb.ROOT), "worktree", "remove", "--force", str(tmp / "base")],
                    capture_output=True,
                )
    (a, _, path_a), (b, _, path_b) = sides
    label = f"head / {args.base}" if args.base is not None else f"{path_b} / {path_a}"
    print(f"{label}: {per_request[b] / per_request[a]:.3f}x instructions per request")


def features(path: str, stream: bool, low: int, high: int) -> None:
    """The floor (the pass-through), then what each feature costs in instructions of the gateway's process:
    everything on less the row. The spend log's helper process is not counted (callgrind follows the server
    only); at this rate its inserts are made by the store's thread, which is."""
    unit = "stream" if stream else "request"
    with tempfile.TemporaryDirectory(prefix="modelyard-ir-") as tmp_name:
        tmp = Path(tmp_name)
        upstream, upstream_proc = gb.start_upstream(0)
        found: dict[str, float] = {}
        try:
            floor = per_unit(partial(floor_instructions, upstream, tmp, path, stream=stream), low, high)
            print(f"pass-through (the floor): {floor:,.0f} instructions per {unit}", flush=True)
            for name, edit, master in FEATURE_ROWS:
                slug = re.sub(r"\W+", "-", name)
                measure = partial(
                    instructions, None, upstream, tmp, path, name=slug, stream=stream, edit=edit, master=master
                )
                found[name] = per_unit(measure, low, high)
                print(f"{name}: {found[name]:,.0f} instructions per {unit}", flush=True)
        finally:
            upstream_proc.terminate()
    whole = found["everything on"]
    print("\n| row | instructions | / the floor | cost (everything on - row) |\n|---|---|---|---|")
    print(f"| pass-through (the floor) | {floor:,.0f} | 1.000x | |")
    for name, count in found.items():
        cost = "" if name == "everything on" else f"{whole - count:+,.0f}"
        print(f"| {name} | {count:,.0f} | {count / floor:.3f}x | {cost} |")


if __name__ == "__main__":
    main()
