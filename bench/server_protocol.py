"""The HTTP/1.1 server protocol alone: uvicorn's httptools protocol against modelyard's, same app, alternated.

    python bench/server_protocol.py                      # 5 rounds of 5 s, c=16, plain and streamed
    python bench/server_protocol.py --rounds 7 --duration 8

The app (`protocol_app.py`, next to this file) does what the gateway's ASGI side does around a request and
nothing else: reads the JSON body, answers with the gateway's ~10 response headers, either whole
(Content-Length) or as a stream in three pieces. Both sides are `uvicorn` with uvloop, one worker; only
`--http` differs (`httptools`, uvicorn's; `modelyard.server.protocol:GatewayHttpProtocol`, ours). wrk with
chat.lua drives it; CPU per request counts the server's process. Sides alternate (which goes first too),
and each figure is the median ratio over the rounds with its spread: the developers' guide's protocol.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway_bench as gb

SIDES = {"uvicorn": "httptools", "modelyard": "modelyard.server.protocol:GatewayHttpProtocol"}


def serve(side: str) -> gb.Contender:
    port = gb.free_port()
    command = gb.uvicorn_cmd("protocol_app:app", port, app_dir=gb.HERE)
    command[command.index("--http") + 1] = SIDES[side]
    command.append("--no-proxy-headers")  # as `modelyard serve` runs
    proc = gb.spawn(command, env={"PYTHONPATH": f"{gb.HERE}:{gb.ROOT / 'src'}"})
    url = f"http://127.0.0.1:{port}"
    gb.wait_http(url + "/v1/models", proc)
    return gb.Contender(side, url, "bench", "sk-bench", proc)


def measure(side: str, duration: float) -> dict[str, float]:
    contender = serve(side)
    try:
        gb.wrk(contender, 16, 1)  # warm-up
        out = {}
        for stream in (False, True):
            name = "stream" if stream else "plain"
            gb.quiesce()
            assert contender.proc is not None
            cpu = gb.cpu_seconds(contender.proc.pid)
            result = gb.wrk(contender, 16, duration, stream)
            out[name] = float(result["rps"])
            out[name + " cpu_us"] = (gb.cpu_seconds(contender.proc.pid) - cpu) * 1e6 / max(1, result["requests"])
            if result["errors"] or result["non2xx"]:
                raise RuntimeError(f"{side}: {result}")
        return out
    finally:
        contender.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
    for round_ in range(args.rounds):
        order = list(SIDES) if round_ % 2 == 0 else list(reversed(SIDES))
        for side in order:
            runs[side].append(measure(side, args.duration))
        base, ours = runs["uvicorn"][-1], runs["modelyard"][-1]
        print(
            f"round {round_ + 1}: plain {base['plain']:.0f} -> {ours['plain']:.0f} req/s, "
            f"{base['plain cpu_us']:.1f} -> {ours['plain cpu_us']:.1f} µs; stream {base['stream']:.0f} -> "
            f"{ours['stream']:.0f}, {base['stream cpu_us']:.1f} -> {ours['stream cpu_us']:.1f} µs",
            flush=True,
        )
    print(f"\nmodelyard's protocol vs uvicorn's, {args.rounds} rounds of {args.duration:g} s, c=16, alternated:")
    for field in ("plain", "plain cpu_us", "stream", "stream cpu_us"):
        ratios = [o[field] / b[field] for b, o in zip(runs["uvicorn"], runs["modelyard"], strict=True)]
        base = statistics.median(r[field] for r in runs["uvicorn"])
        ours = statistics.median(r[field] for r in runs["modelyard"])
        print(
            f"  {field}: uvicorn {base:.1f}, modelyard {ours:.1f}; ratio median {statistics.median(ratios):.3f} "
            f"(min {min(ratios):.3f}, max {max(ratios):.3f})"
        )


if __name__ == "__main__":
    main()
