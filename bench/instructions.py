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
    out = tmp / f"callgrind.{name}.{count}"
    contender = gb.modelyard(
        upstream,
        tmp,
        src=src,
        name=f"{name}-{count}",
        prefix=["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"],
        edit=edit,
        make_key=not master,
    )
    body = RESPONSES if path == "/v1/responses" else CHAT_STREAM if stream else CHAT
    slug = re.sub(r"\W+", "-", f"{name}-{count}")  # gateway_bench names the server's log after its label
    return sent(contender, path, body, count, name, tmp / f"{slug}.log")


def floor_instructions(upstream: str, tmp: Path, path: str, count: int, stream: bool = False) -> int:
    """The pass-through (bench/passthrough.py under uvicorn, the issue's floor) under callgrind, sent `count`
    requests after the warm-up: the same body and client as a modelyard side."""
    out = tmp / f"callgrind.floor.{count}"
    prefix = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    contender = gb.passthrough(upstream, tmp, name=f"floor-{count}", prefix=prefix)
    return sent(contender, path, CHAT_STREAM if stream else CHAT, count, "floor", tmp / f"floor-{count}.log")


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
                low = instructions(src, upstream, tmp, path, args.low, name, args.stream)
                high = instructions(src, upstream, tmp, path, args.high, name, args.stream)
                per_request[name] = (high - low) / (args.high - args.low)
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
    """What each feature costs in instructions of the gateway's process: everything on less the row. The
    spend log's helper process is not counted (callgrind follows the server only); at this rate its inserts
    are made by the store's thread, which is."""
    with tempfile.TemporaryDirectory(prefix="modelyard-ir-") as tmp_name:
        tmp = Path(tmp_name)
        upstream, upstream_proc = gb.start_upstream(0)
        found: dict[str, float] = {}
        try:
            counts = [floor_instructions(upstream, tmp, path, n, stream) for n in (low, high)]
            floor = (counts[1] - counts[0]) / (high - low)
            print(f"pass-through (the floor): {floor:,.0f} instructions per {'stream' if stream else 'request'}")
            for name, edit, master in FEATURE_ROWS:
                slug = re.sub(r"\W+", "-", name)
                counts = [instructions(None, upstream, tmp, path, n, slug, stream, edit, master) for n in (low, high)]
                found[name] = (counts[1] - counts[0]) / (high - low)
                print(f"{name}: {found[name]:,.0f} instructions per {'stream' if stream else 'request'}", flush=True)
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
