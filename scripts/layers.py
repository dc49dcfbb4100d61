"""The import-layer contract: which package of `modelyard` may import which, enforced from one table.

The table lives in docs/architecture.md (between the `layers:begin`/`layers:end` marks), so the map a reader
sees is the rule CI checks. Each row becomes an import-linter `forbidden` contract (the package may import
only what its row names; what it reaches through those is their business), and a package missing from the
table, or a row naming a package that does not exist, fails too.

    python scripts/layers.py [--root src] [--doc docs/architecture.md] [--package modelyard]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

BEGIN, END = "<!-- layers:begin -->", "<!-- layers:end -->"
ANY = "any"
_ROW = re.compile(r"^\|\s*`(?P<package>\w+)/`\s*\|(?P<job>[^|]*)\|(?P<imports>[^|]*)\|\s*$")
_NAME = re.compile(r"`(\w+)`")


class TableError(ValueError):
    """The table cannot be read as a contract (missing marks, a malformed row, an unknown package)."""


def read_table(doc: str) -> dict[str, set[str] | None]:
    """package → the packages it may import (None: any), from the marked table of `doc`."""
    start, end = doc.find(BEGIN), doc.find(END)
    if start < 0 or end < start:
        raise TableError(f"the layer table must sit between {BEGIN} and {END}")
    table: dict[str, set[str] | None] = {}
    for line in doc[start + len(BEGIN) : end].splitlines():
        match = _ROW.match(line.strip())
        if match is None:
            continue
        imports = match["imports"].strip()
        table[match["package"]] = None if imports == ANY else set(_NAME.findall(imports))
    if not table:
        raise TableError("the layer table has no rows")
    return table


def packages(root: Path, package: str) -> set[str]:
    """The subpackages of `package` under `root` (directories with Python modules)."""
    base = root / package
    return {p.name for p in base.iterdir() if p.is_dir() and any(p.glob("*.py"))}


def contracts_ini(package: str, table: dict[str, set[str] | None], existing: set[str]) -> str:
    """An import-linter configuration with one `forbidden` contract per restricted package."""
    unknown = sorted((set(table) | {n for v in table.values() if v for n in v}) - existing)
    if unknown:
        raise TableError(f"the layer table names packages that do not exist: {', '.join(unknown)}")
    missing = sorted(existing - set(table))
    if missing:
        raise TableError(f"packages missing from the layer table: {', '.join(missing)}")
    lines = ["[importlinter]", f"root_package = {package}", ""]
    for name, allowed in sorted(table.items()):
        forbidden = sorted(existing - {name} - (allowed or set()))
        if allowed is None or not forbidden:
            continue
        lines += [
            f"[importlinter:contract:{name}]",
            f"name = {package}.{name} may import only: {', '.join(sorted(allowed)) or 'nothing of ours'}",
            "type = forbidden",
            f"source_modules = {package}.{name}",
            "forbidden_modules =",
            *(f"    {package}.{other}" for other in forbidden),
            "allow_indirect_imports = true",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("src"))
    parser.add_argument("--doc", type=Path, default=Path("docs/architecture.md"))
    parser.add_argument("--package", default="modelyard")
    args = parser.parse_args(argv)
    try:
        ini = contracts_ini(args.package, read_table(args.doc.read_text()), packages(args.root, args.package))
    except TableError as exc:
        print(f"{args.doc}: {exc}", file=sys.stderr)
        return 1
    with tempfile.NamedTemporaryFile("w", suffix=".ini", delete=False) as handle:
        handle.write(ini)
    try:
        command = ["lint-imports", handle.name, "--no-cache", "--no-logo"]
        return subprocess.call(command, env={**os.environ, "PYTHONPATH": str(args.root.resolve())})
    finally:
        Path(handle.name).unlink()


if __name__ == "__main__":
    sys.exit(main())
