#!/usr/bin/env python3
"""Finds import cycles between the modules of a crate.

Reads the module graph that `cargo modules dependencies` prints (a dot
graph of "uses" edges, with `--no-owns` so that a module containing
another is no edge), and reports every strongly connected component of
more than one module. cargo-modules' own `--acyclic` also counts a type
and its methods as a cycle; this looks at modules only.

    cargo modules dependencies -p isthmus-core --lib --no-externs \
        --no-sysroot --no-fns --no-traits --no-types --no-owns \
        | python3 scripts/check-module-cycles.py

Exit status 1 when a cycle exists, printing its modules and the edges
between them.
"""
import re
import sys


def main() -> int:
    edges: dict[str, set[str]] = {}
    for line in sys.stdin:
        m = re.match(r'\s*"([^"]+)"\s*->\s*"([^"]+)"', line)
        if not m:
            continue
        a, b = m.group(1), m.group(2)
        if a != b:
            edges.setdefault(a, set()).add(b)
            edges.setdefault(b, set())
    if not edges:
        print("no module edges read: is the input cargo-modules' dot graph?")
        return 2
    # Tarjan's strongly connected components, iteratively.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                    advanced = True
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    modules = len(edges)
    if not cycles:
        print(f"no import cycles among {modules} modules")
        return 0
    for component in cycles:
        print("import cycle: " + ", ".join(component))
        members = set(component)
        for a in component:
            for b in sorted(edges[a] & members):
                print(f"    {a} -> {b}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
