"""The step graph: topological order, cycle detection and critical paths. Pure functions over dicts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def find_cycle(deps: Mapping[str, Sequence[str]]) -> list[str] | None:
    """One dependency cycle as a closed path (`[a, b, a]`), or None. Unknown names are ignored."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(deps, white)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        color[node] = grey
        stack.append(node)
        for dep in deps[node]:
            if dep not in color:
                continue
            if color[dep] == grey:
                return [*stack[stack.index(dep) :], dep]
            if color[dep] == white:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        color[node] = black
        return None

    for node in deps:
        if color[node] == white:
            found = visit(node)
            if found:
                return found
    return None


def topo_order(deps: Mapping[str, Sequence[str]]) -> list[str]:
    """Nodes so that each comes after its dependencies; ties keep declaration order (stable output)."""
    remaining = {node: {d for d in deps[node] if d in deps} for node in deps}
    order: list[str] = []
    while remaining:
        ready = [node for node, pending in remaining.items() if not pending]
        if not ready:
            raise ValueError(f"dependency cycle among {sorted(remaining)}")
        for node in ready:
            order.append(node)
            del remaining[node]
        for pending in remaining.values():
            pending.difference_update(ready)
    return order


def critical_path(deps: Mapping[str, Sequence[str]], durations: Mapping[str, float]) -> tuple[float, list[str]]:
    """The longest chain of dependent durations: its length and its nodes, first to last."""
    finish: dict[str, float] = {}
    via: dict[str, str | None] = {}
    for node in topo_order(deps):
        best, best_parent = 0.0, None
        for dep in deps[node]:
            if dep in finish and finish[dep] > best:
                best, best_parent = finish[dep], dep
        finish[node] = best + durations.get(node, 0.0)
        via[node] = best_parent
    if not finish:
        return 0.0, []
    end = max(finish, key=lambda n: finish[n])
    path: list[str] = []
    cursor: str | None = end
    while cursor is not None:
        path.append(cursor)
        cursor = via[cursor]
    return finish[end], path[::-1]
