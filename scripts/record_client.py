#!/usr/bin/env python3
"""Record exactly what a real client sends to the gateway: a logging proxy on loopback.

    scripts/record_client.py --upstream http://127.0.0.1:4000 --port 4100 --out claude.jsonl
    ANTHROPIC_BASE_URL=http://127.0.0.1:4100 ANTHROPIC_API_KEY=x claude -p "hi" --model smart

Every request is forwarded unchanged (streams stream through) and written to --out as one JSON line:
method, path with query, headers (credentials masked), body, status, answer headers and answer body. Ctrl-C
stops it. `modelyard.testing.recorder.load_recording` reads the file back (the client tests replay them).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from modelyard.testing.recorder import RecordingProxy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, help="the gateway's base URL, e.g. http://127.0.0.1:4000")
    parser.add_argument("--port", type=int, default=0, help="port to listen on, on 127.0.0.1 (0: any free one)")
    parser.add_argument("--out", type=Path, required=True, help="JSONL file the exchanges are appended to")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with RecordingProxy(args.upstream, port=args.port, out=args.out) as proxy:
        print(f"recording {proxy.url} -> {args.upstream} into {args.out}", file=sys.stderr, flush=True)
        stop.wait()
        print(f"{len(proxy.snapshot())} exchanges recorded", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
