"""The import graph of the lapeval package, read from its source with ``ast`` (module-level and in-function
imports alike): modules, cycles, imports that run upward between the method's floors, the longest chain.

    python benchmarks/import_graph.py [PACKAGE_DIR]        # default: this checkout's lapeval/

Floors, lowest first (an import may go down or sideways within a floor, never up; identification and
intervention are siblings that never import each other):

    0 ground         errors, _io, paths, languages, models, sites, masks, results, plot, instances,
                     taskdata, metrics/  (what every stage uses)
    1 identification corpus → statistics → LAPE selection → pipeline
    1 intervention   operation → setting → hooks
    2 backend        lm.py (the ``lape`` model: interventions inside lm-eval's HFLM)
    3 lss            LSS tasks, the matrix engine, factor search
    4 grid           config, run, shards, bootstrap, report, leaderboard
    5 gate / demo    the CI gate's core; the offline demo
    6 commands       cli.py, commands/, __main__.py

tests/test_architecture.py runs :func:`graph` and fails on a cycle or an upward import.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

FLOORS = {"ground": 0, "identification": 1, "intervention": 1, "backend": 2, "lss": 3, "grid": 4, "gate": 5,
          "commands": 6}
_SIBLINGS = {"identification", "intervention"}  # same floor, but neither imports the other
_FLAT = {"corpus": "identification", "stats": "identification", "lape": "identification",
         "operation": "intervention", "setting": "intervention", "intervene": "intervention", "_callable": "intervention",
         "factor": "lss", "shard": "grid", "report": "grid", "leaderboard": "grid", "check": "gate"}


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def stage(module: str) -> str:
    """The floor name of a module of the package."""
    parts = module.split(".")[1:]
    head = parts[0] if parts else ""
    if head in ("identification", "intervention", "lss", "grid"):
        return head
    if head in _FLAT:  # the flat layout before the floors were folders (to measure it the same way)
        return _FLAT[head]
    if head == "lm":
        return "backend"
    if head in ("gate", "demo"):
        return "gate"
    if head in ("cli", "commands", "__main__"):
        return "commands"
    return "ground"


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def graph(root: str | Path) -> dict[str, set[str]]:
    """{module: {package modules it imports}} for every ``.py`` file under ``root`` (the package folder).
    ``from X import name`` counts as an import of ``X.name`` when that is a module, else of ``X``; imports of
    the package's own ``__init__`` (``from . import __version__``) are left out: it loads nothing eagerly."""
    root = Path(root).resolve()
    pkg = root.name
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    edges: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_package, node)
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    targets.append(sub if sub in files else base)
            for t in targets:
                while t and t not in files and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in files and t != pkg and t != mod and t.split(".")[0] == pkg:
                    edges[mod].add(t)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def upward(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports from a lower floor into a higher one, and between the sibling floors."""
    bad = []
    for a, targets in edges.items():
        for b in sorted(targets):
            sa, sb = stage(a), stage(b)
            if FLOORS[sb] > FLOORS[sa] or (sa != sb and {sa, sb} <= _SIBLINGS):
                bad.append((a, b))
    return sorted(bad)


def longest_chain(edges: dict[str, set[str]]) -> list[str]:
    """The longest import path (on the graph with its cycles' back edges ignored)."""
    best: dict[str, list[str]] = {}
    visiting: set[str] = set()

    def walk(v: str) -> list[str]:
        if v in best:
            return best[v]
        visiting.add(v)
        tail: list[str] = []
        for w in sorted(edges.get(v, ())):
            if w in visiting:
                continue
            cand = walk(w)
            if len(cand) > len(tail):
                tail = cand
        visiting.discard(v)
        best[v] = [v, *tail]
        return best[v]

    return max((walk(v) for v in sorted(edges)), key=len, default=[])


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[1] / "lapeval"
    edges = graph(root)
    cyc, up, chain = cycles(edges), upward(edges), longest_chain(edges)
    floors = sorted({stage(m) for m in edges}, key=lambda s: FLOORS[s])
    print(f"{root}: {len(edges)} modules, {sum(map(len, edges.values()))} imports between them")
    for s in floors:
        mods = sorted(m for m in edges if stage(m) == s)
        print(f"  floor {FLOORS[s]} {s:<14} {len(mods):>2} modules")
    print(f"cycles: {len(cyc)}")
    for c in cyc:
        print("  " + " ↔ ".join(c))
    print(f"imports that run upward (or between siblings): {len(up)}")
    for a, b in up:
        print(f"  {a} ({stage(a)}) → {b} ({stage(b)})")
    print(f"longest chain ({len(chain)} modules): " + " → ".join(chain))
    return 1 if cyc or up else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
