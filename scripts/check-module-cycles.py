#!/usr/bin/env python3
"""Finds import cycles between the modules of a crate.

Two ways to get the module graph ("uses" edges between modules; a module
containing another is no edge):

  --dot     read the dot graph that cargo-modules prints:
                cargo modules dependencies -p isthmus-core --lib \\
                    --no-externs --no-sysroot --no-fns --no-traits \\
                    --no-types --no-owns \\
                | python3 scripts/check-module-cycles.py --dot
            (cargo-modules' own `--acyclic` also counts a type and its
            methods as a cycle; this looks at modules only)
  --src DIR read the crate's sources under DIR (its `src/`): every
            `use crate::`, `use super::` and `crate::a::b` path outside
            comments, `#[cfg(test)]` modules left out, is an edge to the
            deepest module it names. No toolchain needed; CI runs this.

Exit status 1 when a cycle exists, printing its modules and the edges
between them; 2 when no graph could be read.
"""
import os
import re
import sys


def strip_comments(text: str) -> str:
    """Source without comments (string literals kept as they are)."""
    out = []
    i, n = 0, len(text)
    in_str = False
    while i < n:
        c = text[i]
        if in_str:
            out.append(c)
            if c == "\\":
                out.append(text[i + 1 : i + 2])
                i += 2
                continue
            if c == '"':
                in_str = False
            i += 1
        elif c == '"':
            in_str = True
            out.append(c)
            i += 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c == "'" and i + 2 < n and text[i + 2] == "'":
            out.append(text[i : i + 3])  # a char literal such as '"'
            i += 3
        else:
            out.append(c)
            i += 1
    return "".join(out)


def without_test_modules(text: str) -> str:
    """Drop `#[cfg(test)] mod NAME { ... }` blocks and declarations."""
    out = []
    pos = 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*([;{])", text):
        if m.start() < pos:
            continue
        out.append(text[pos : m.start()])
        if m.group(3) == ";":
            pos = m.end()
            continue
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        pos = i
    out.append(text[pos:])
    return "".join(out)


def expand(tree: str, prefix: list) -> list:
    """The paths a `use` tree names."""
    tree = tree.strip()
    m = re.match(r"^(.*?)\{(.*)\}$", tree, re.S)
    if not m:
        path = tree.split(" as ")[0]
        return [prefix + [p.strip() for p in path.split("::") if p.strip()]]
    base = [p.strip() for p in m.group(1).split("::") if p.strip()]
    parts, depth, cur = [], 0, ""
    for ch in m.group(2):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    paths = []
    for part in parts:
        if part.strip():
            paths += expand(part, prefix + base)
    return paths


def source_graph(root: str) -> dict:
    modules = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            parts = os.path.relpath(path, root)[:-3].split(os.sep)
            if parts[-1] in ("mod", "lib", "main"):
                parts = parts[:-1]
            modules["::".join(parts)] = path
    # Files of test modules (`#[cfg(test)] mod tests;`) are not the crate.
    tests = set()
    for name, path in modules.items():
        text = strip_comments(open(path, encoding="utf-8").read())
        for m in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+(\w+)\s*;", text):
            tests.add("::".join([p for p in [name, m.group(1)] if p]))
    edges = {name: set() for name in modules if name not in tests}
    for name in edges:
        text = without_test_modules(strip_comments(open(modules[name], encoding="utf-8").read()))
        here = name.split("::") if name else []
        paths = []
        for u in re.finditer(r"\buse\s+([^;]+);", text):
            paths += expand(u.group(1), [])
        paths += [m.group(0).split("::") for m in re.finditer(r"\bcrate(::\w+)+", text)]
        for path in paths:
            if not path:
                continue
            if path[0] == "crate":
                target = path[1:]
            elif path[0] in ("super", "self"):
                target = here[:]
                if path[0] == "self":
                    path = path[1:]
                while path and path[0] == "super":
                    target, path = target[:-1], path[1:]
                target += path
            else:
                continue
            for k in range(len(target), -1, -1):
                candidate = "::".join(target[:k])
                if candidate in edges:
                    if candidate != name:
                        edges[name].add(candidate)
                    break
    return edges


def dot_graph(stream) -> dict:
    edges = {}
    for line in stream:
        m = re.match(r'\s*"([^"]+)"\s*->\s*"([^"]+)"', line)
        if m and m.group(1) != m.group(2):
            edges.setdefault(m.group(1), set()).add(m.group(2))
            edges.setdefault(m.group(2), set())
    return edges


def cycles(edges: dict) -> list:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(sorted(edges[root])))]
        while work:
            v, it = work[-1]
            pushed = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                    pushed = True
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            if pushed:
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
                    found.append(sorted(component))
    return found


def main() -> int:
    args = sys.argv[1:]
    if args[:1] == ["--src"] and len(args) == 2:
        edges = source_graph(args[1])
    elif args == ["--dot"] or not args:
        edges = dot_graph(sys.stdin)
    else:
        print(__doc__)
        return 2
    if not edges:
        print("no modules read")
        return 2
    found = cycles(edges)
    if not found:
        print(f"no import cycles among {len(edges)} modules")
        return 0
    for component in found:
        print("import cycle: " + ", ".join(c or "<crate root>" for c in component))
        members = set(component)
        for a in component:
            for b in sorted(edges[a] & members):
                print(f"    {a or '<crate root>'} -> {b or '<crate root>'}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
