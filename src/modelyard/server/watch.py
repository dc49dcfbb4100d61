"""`modelyard serve --watch`: reload when a file the config was built from changes.

Polling `os.stat` once a second rather than inotify: a Kubernetes ConfigMap or an editor replaces a file by
renaming a new one over it (often through a symlink swap), which inotify watches of the old inode miss; a
stat of the path follows it. The signature is (inode, size, mtime): any replacement or write changes one.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger("modelyard.reload")

Signature = tuple[int, int, int] | None


def signature(path: Path) -> Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None  # gone for now (mid-replace): a change once it is back
    return (st.st_ino, st.st_size, st.st_mtime_ns)


async def watch(
    files: Callable[[], list[Path]],
    on_change: Callable[[str], Awaitable[object]],
    *,
    interval_s: float = 1.0,
    settle_s: float = 0.2,
) -> None:
    """Call `on_change` when any of `files()` changes (re-read after every reload: a new `prices_from:` is
    watched too). A change is acted on once it has been still for `settle_s` (a writer mid-way)."""
    seen = {path: signature(path) for path in files()}
    while True:
        await asyncio.sleep(interval_s)
        changed = [path for path in files() if signature(path) != seen.get(path)]
        if not changed:
            continue
        await asyncio.sleep(settle_s)
        await on_change("file changed: " + ", ".join(str(p) for p in changed))
        seen = {path: signature(path) for path in files()}
