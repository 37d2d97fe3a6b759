#!/usr/bin/env python3
"""Fail when the modules of any workspace crate import each other in a circle.

A module is a file under `crates/*/src` (a folder module and its files count
as one module named after the folder). An edge A -> B is any `crate::B`
path in A (a `use`, or a path in code), or `super::B` in a file of A's
folder. Doc comments and line comments are ignored. Prints each cycle
(a strongly connected component of more than one module) and exits 1.

    scripts/check-module-cycles.py            # every crate
    scripts/check-module-cycles.py --graph    # also print each crate's edges
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def module_of(src: pathlib.Path, f: pathlib.Path) -> str:
    rel = f.relative_to(src)
    top = rel.parts[0]
    if len(rel.parts) == 1:
        return top[:-3] if top.endswith(".rs") else top
    return top


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(re.sub(r"//.*", "", line) for line in text.splitlines())


def edges(src: pathlib.Path):
    mods = {}
    for f in sorted(src.rglob("*.rs")):
        m = module_of(src, f)
        if m in ("lib", "main"):
            continue
        mods.setdefault(m, set())
        text = strip_comments(f.read_text())
        refs = set(re.findall(r"\bcrate::([a-z_][a-z0-9_]*)", text))
        # `use crate::{a, b::c}`: each name in the braces.
        for group in re.findall(r"\bcrate::\{([^}]*)\}", text):
            refs |= set(re.findall(r"(?:^|,)\s*([a-z_][a-z0-9_]*)", group))
        # In a folder module's files, `super::x` is a sibling inside the
        # same module; in a top-level file it would be the crate root.
        if len(f.relative_to(src).parts) == 1:
            refs |= set(re.findall(r"\bsuper::([a-z_][a-z0-9_]*)", text))
        mods[m] |= {r for r in refs if r != m}
    names = set(mods)
    return {m: {r for r in rs if r in names} for m, rs in mods.items()}


def cycles(graph):
    """Tarjan's strongly connected components of more than one node."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main():
    show = "--graph" in sys.argv
    failed = False
    for src in sorted(ROOT.glob("crates/*/src")):
        graph = edges(src)
        crate = src.parent.name
        if show:
            for m in sorted(graph):
                print(f"{crate}: {m} -> {', '.join(sorted(graph[m])) or '-'}")
        for c in cycles(graph):
            failed = True
            inner = {m: sorted(graph[m] & set(c)) for m in c}
            print(f"{crate}: import cycle among {', '.join(c)}")
            for m, rs in inner.items():
                print(f"    {m} -> {', '.join(rs)}")
    if failed:
        sys.exit(1)
    print("no module import cycles")


if __name__ == "__main__":
    main()
