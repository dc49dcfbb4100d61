"""`modelyard router add-model` and `modelyard router retrain`: change a trained router without starting over.

    modelyard router add-model NAME --router router.npz --from acceptance/results.json --out router.npz
    modelyard router add-model NAME --router router.npz --data few_rows.jsonl --out router.npz
    modelyard router retrain --router router.npz --data train.jsonl --from-feedback --store modelyard.db

Registered on the `router` group by `modelyard.cli.router` (imported at its end).
"""

from __future__ import annotations

from modelyard.cli.router import app

__all__ = ["app"]
