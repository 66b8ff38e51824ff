#!/usr/bin/env python3
"""Fails when modules of a crate import each other in a circle.

For each crate's `src/`, every file belongs to a top-level module (its first
path component); `crate::x` in a file is an edge to module `x`. Inside a
directory module (`src/m/`), `super::y` from a child is an edge to sibling `y`,
or to the parent itself when `y` is not a sibling (a child leaning on its
parent, which imports it: a circle). `lib.rs`/`main.rs` only wire and are left
out. Prints each circle found and exits 1, else prints a summary and exits 0.
"""
import os
import re
import sys

CRATES = ["core", "net", "server", "native-host", "wasm", "tests"]
USE_CRATE = re.compile(r"\bcrate::(\w+)")
USE_SUPER = re.compile(r"\bsuper::(\w+)")


def strip_tests(text):
    # Unit tests may reach anywhere; cut at the first `#[cfg(test)]` module.
    # Comments (doc links included) are not imports.
    i = text.find("#[cfg(test)]\nmod ")
    text = text if i < 0 else text[:i]
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def cycles(graph):
    found, state, stack = [], {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                found.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    return found


def check_crate(src):
    top = {}
    sub = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, src)
            parts = rel[:-3].split(os.sep)
            if parts[0] in ("lib", "main") or parts[0] == "bin":
                continue
            module = parts[0]
            text = strip_tests(open(path, encoding="utf-8").read())
            edges = {m for m in USE_CRATE.findall(text) if m != module}
            top.setdefault(module, set()).update(edges)
            if len(parts) == 2:
                child = parts[1]
                siblings = {
                    g[:-3]
                    for g in os.listdir(os.path.join(src, parts[0]))
                    if g.endswith(".rs")
                }
                graph = sub.setdefault(parts[0], {})
                if child == "mod":
                    graph.setdefault("mod", set()).update(
                        s for s in siblings if s != "mod"
                    )
                else:
                    for y in USE_SUPER.findall(text):
                        graph.setdefault(child, set()).add(y if y in siblings else "mod")
    problems = cycles(top)
    for parent, graph in sub.items():
        problems += [[f"{parent}::{n}" for n in c] for c in cycles(graph)]
    return problems, len(top)


def main():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    bad = False
    total = 0
    for crate in CRATES:
        src = os.path.join(here, crate, "src")
        if not os.path.isdir(src):
            continue
        problems, n = check_crate(src)
        total += n
        for c in problems:
            bad = True
            print(f"{crate}: import circle: {' -> '.join(c)}")
    if bad:
        return 1
    print(f"no import circles among {total} modules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
