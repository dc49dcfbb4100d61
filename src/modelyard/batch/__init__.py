"""`modelyard batch`: one workflow over a table of inputs, resumable per row, on one machine or a Ray cluster.

Each input row is one run of the workflow (`runner.py`), checkpointed step by step in the batch store
(`store.py`: SQLite by default, PostgreSQL for several machines); the driver (`driver.py`) feeds rows to an
engine (`engine.py`: the local asyncio one, or `ray_engine.py`) within a concurrency bound and one money
budget, writes results as rows finish and shows progress. `provider_batch.py` sends single-model-step
workflows through the providers' own Batch APIs instead. See docs/batch.md.
"""
