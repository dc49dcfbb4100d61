"""(Re)write the golden responses, tests/data/golden/*.json, from this tree (issue 20).

Run it only when a change is MEANT to alter what clients receive (a header, a body, a cost, a spend row),
and commit the new fixtures with that change so the diff shows what moved:

    PYTHONPATH=src python scripts/record_golden.py

It starts a fresh simulator and a real `modelyard serve`, sends tests/e2e/golden.py's requests in order,
and writes one fixture per request (the old ones are removed). tests/e2e/test_golden_responses.py replays
them against the tree under test.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for `tests.e2e.golden`

from tests.e2e import golden


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="golden-") as workdir:
        records = golden.run(Path(workdir))
    golden.write_fixtures(records)
    size = sum(p.stat().st_size for p in golden.FIXTURES.glob("*.json"))
    print(f"wrote {len(records)} fixtures ({size / 1024:.0f} KiB) to {golden.FIXTURES}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
