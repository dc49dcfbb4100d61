"""Writes tickets.jsonl: 1,000 synthetic support tickets, the same bytes on every run (fixed seed).

python examples/batch/make_tickets.py            # rewrites examples/batch/tickets.jsonl
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ROWS = 1_000
SEED = 18
PRODUCTS = ["billing portal", "mobile app", "dashboard", "CSV export", "API", "SSO login", "notifications"]
OPENINGS = ["Hi team,", "Hello,", "Urgent:", "Quick question:", "Hey support,", ""]
PROBLEMS = {
    "billing": [
        "I was charged twice for invoice {order}",
        "please refund order {order}, bought by mistake",
        "the VAT number on invoice {order} is wrong",
    ],
    "bug": [
        "the {product} crashes when I open it",
        "the {product} shows an empty page since this morning",
        "the {product} times out after {minutes} minutes",
    ],
    "feature_request": [
        "please add dark mode to the {product}",
        "could the {product} support weekly schedules?",
        "we need bulk deletes in the {product}",
    ],
    "account": [
        "I cannot log in after resetting my password",
        "please change the email on my account",
        "my two-factor codes are rejected by the {product}",
    ],
    "other": [
        "where can I download last year's receipts?",
        "who is my account manager?",
        "do you have an office in Berlin?",
    ],
}
TIERS = ["free", "pro", "enterprise"]


def ticket(rng: random.Random, index: int) -> dict[str, object]:
    kind = rng.choice(sorted(PROBLEMS))
    text = rng.choice(PROBLEMS[kind]).format(
        product=rng.choice(PRODUCTS), order=f"INV-{rng.randrange(10_000, 99_999)}", minutes=rng.randrange(2, 30)
    )
    opening = rng.choice(OPENINGS)
    return {
        "id": f"T-{index:05d}",
        "ticket": f"{opening} {text}.".strip(),
        "tier": rng.choice(TIERS),
    }


def main() -> None:
    rng = random.Random(SEED)
    target = Path(__file__).resolve().parent / "tickets.jsonl"
    lines = [json.dumps(ticket(rng, i), ensure_ascii=False) for i in range(ROWS)]
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {target} ({ROWS} rows)")


if __name__ == "__main__":
    main()
