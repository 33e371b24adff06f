#!/usr/bin/env python3
"""Import cycles between the modules of each crate of the workspace.

A module depends on another when its file names it: a `use` declaration or a path in the code
(`crate::a::b`, `super::x`, `self::x`, or `child::x` for a child module of the file's own
module). A path counts for the module that defines the item: the deepest module (file) the
path names, then through that module's `use`/`pub use` of the item, so `use crate::Error` is an
edge to `error` when `lib.rs` has `pub use error::Error` (a facade root is not a cycle), while
`pub use error::Error` itself is an edge from the root to `error`. A glob import
(`use super::*`) is an edge to the module it names. Items are found by name (`struct X`,
`fn x`, ...), not by type checking: a name defined twice in a module may send an edge to
the wrong one. Inline modules (`mod tests { ... }`) belong to their file; their `super::` is resolved
correctly. Comments and string literals are ignored. Macro-generated paths are not seen.

The modules of a crate are found from its roots (`src/lib.rs`, `src/main.rs`, `src/bin/*`)
by following `mod x;` declarations (`#[path]` included); every root is one graph.

For every strongly connected component of more than one module the script prints its modules
and the edges inside it (with the first place each edge comes from). Exit status: 0 without
cycles, 1 with, 2 on usage errors.

    scripts/import-cycles.py                    # every member of the workspace
    scripts/import-cycles.py mesh-authz bins/dataplane
    scripts/import-cycles.py --edges mesh-authz # also list every edge (the layering)
    scripts/import-cycles.py --self-test        # checks the script on a made-up crate
"""

import argparse
import os
import re
import sys
from pathlib import Path

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_code(text):
    """Replaces comments and string/char literals by spaces, keeping line breaks."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif (m := re.compile(r'b?r(#*)"').match(text, i)) and (
            i == 0 or not re.match(r"[A-Za-z0-9_]", text[i - 1])
        ):
            end = '"' + m.group(1)
            j = text.find(end, m.end())
            j = n if j < 0 else j + len(end)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j = min(n, j + 1)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "'":
            # A char literal ('a', '\n', '\u{..}'), not a lifetime ('a).
            m = re.compile(r"'(\\u\{[0-9a-fA-F]+\}|\\.|[^\\'])'").match(text, i)
            if m:
                out.append(" " * (m.end() - i))
                i = m.end()
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def expand_use_tree(tree):
    """`a::{b as c, d::{e, *}}` -> [(c, [a, b]), (e, [a, d, e]), ("*", [a, d])]: each leaf
    as (the name it binds, its path)."""
    tree = re.sub(r"\s+as\s+", " as ", tree.strip())
    tree = re.sub(r"\s*(::|,|\{|\})\s*", r"\1", tree)
    results = []

    def walk(prefix, s):
        parts, depth, cur = [], 0, ""
        for ch in s:
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        if cur:
            parts.append(cur)
        for p in parts:
            if "{" in p:
                head, _, rest = p.partition("{")
                walk(prefix + [x for x in head.split("::") if x], rest[: rest.rfind("}")])
                continue
            p, _, alias = p.partition(" as ")
            segs = prefix + [x for x in p.split("::") if x]
            if segs and segs[-1] == "*":
                results.append(("*", segs[:-1]))
            elif segs and segs[-1] == "self":
                results.append((alias or segs[-2] if len(segs) > 1 else "", segs[:-1]))
            elif segs:
                results.append((alias or segs[-1], segs))

    walk([], tree)
    return results


class Crate:
    def __init__(self, name, root_file):
        self.name = name
        self.files = {}  # module path (tuple) -> Path
        self.edges = {}  # (from, to) -> "file:line text"
        self.texts = {}  # module path -> code without comments and strings
        self.defs = {}  # module path -> names of the items it defines
        self.imports = {}  # module path -> {name: (inline stack, path)} from `use`
        self.globs = {}  # module path -> [(inline stack, path)] from `use ...::*`
        self.root_file = root_file


def mod_dir(path, modpath, is_root):
    """Directory where `mod x;` of the module in `path` looks for `x.rs` / `x/mod.rs`."""
    if is_root or path.name == "mod.rs":
        return path.parent
    return path.parent / path.stem


def discover(crate, path, modpath, is_root):
    crate.files[modpath] = path
    text = strip_code(path.read_text(encoding="utf-8", errors="replace"))
    crate.texts[modpath] = text
    raw = path.read_text(encoding="utf-8", errors="replace")
    base = mod_dir(path, modpath, is_root)
    for m in re.finditer(r"(?m)^[ \t]*(?:pub(?:\([^)]*\))?\s+)?mod\s+(" + IDENT + r")\s*;", text):
        name = m.group(1)
        # A `#[path = "..."]` attribute on the lines just before (read from the raw text).
        before = raw[: m.start()].rstrip().splitlines()[-3:]
        target = None
        for line in reversed(before):
            pm = re.search(r'#\[path\s*=\s*"([^"]+)"\]', line)
            if pm:
                target = (path.parent / pm.group(1)).resolve()
                break
            if not line.strip().startswith("#"):
                break
        if target is None:
            for cand in (base / f"{name}.rs", base / name / "mod.rs"):
                if cand.exists():
                    target = cand
                    break
        if target is None or not target.exists():
            continue
        discover(crate, target, modpath + (name,), False)


def inline_module_at(text):
    """For each character offset's line, the inline-module stack (names) around it."""
    stack = []  # (name, brace depth at which it closes)
    depth = 0
    per_line = [[]]
    tok = re.compile(r"\bmod\s+(" + IDENT + r")\s*\{|[{}\n]")
    for m in tok.finditer(text):
        s = m.group(0)
        if s == "\n":
            per_line.append([n for n, _ in stack])
        elif s == "{":
            depth += 1
        elif s == "}":
            if stack and stack[-1][1] == depth:
                stack.pop()
            depth -= 1
        else:
            depth += 1
            stack.append((m.group(1), depth))
            per_line[-1] = [n for n, _ in stack]
    return per_line


ITEM = re.compile(
    r"\b(?:struct|enum|union|trait|fn|type|const|static|mod|macro_rules!)\s+(" + IDENT + r")"
)


def index_module(crate, modpath, text):
    """The names a module defines and imports (for following re-exports)."""
    crate.texts[modpath] = text
    crate.defs[modpath] = set(ITEM.findall(text))
    imports, globs = {}, []
    lines = inline_module_at(text)
    for m in USE.finditer(text):
        inline = lines[text.count("\n", 0, m.start())]
        for bound, segs in expand_use_tree(m.group(1)):
            if bound == "*":
                globs.append((inline, segs))
            elif bound and not inline:
                imports[bound] = (inline, segs)
    crate.imports[modpath] = imports
    crate.globs[modpath] = globs


USE = re.compile(r"\buse\s+([^;]+);")


def absolute(crate, modpath, inline, segs):
    """The absolute path (list of segments) `segs` names from `modpath` (+ inline modules), or
    None for a path outside the crate."""
    cur = list(modpath) + list(inline)
    if not segs:
        return None
    first = segs[0]
    if first == "crate":
        return segs[1:]
    if first in ("super", "self"):
        base, rest = cur, segs
        while rest and rest[0] in ("super", "self"):
            if rest[0] == "super":
                if not base:
                    return None
                base = base[:-1]
            rest = rest[1:]
        return base + rest
    # A child module named without `self::` (2018 paths).
    if tuple(cur + [first]) in crate.files:
        return cur + segs
    if tuple(list(modpath) + [first]) in crate.files:
        return list(modpath) + segs
    return None


def locate(crate, full, seen=None):
    """The module that defines what the absolute path `full` names: the deepest module file
    it names, then through that module's `use` imports (re-exports) for the next segment."""
    seen = seen or set()
    k = len(full)
    while k > 0 and tuple(full[:k]) not in crate.files:
        k -= 1
    mod = tuple(full[:k])
    if k == len(full) or (mod, full[k]) in seen:
        return mod
    seen.add((mod, full[k]))
    item = full[k]
    if item in crate.defs.get(mod, ()):
        return mod
    imp = crate.imports.get(mod, {}).get(item)
    if imp is not None:
        target = absolute(crate, mod, imp[0], imp[1])
        if target is not None:
            return locate(crate, target + full[k + 1 :], seen)
        return mod
    for inline, gsegs in crate.globs.get(mod, ()):
        if inline:
            continue
        target = absolute(crate, mod, inline, gsegs)
        if target is None:
            continue
        gmod = tuple(target)
        if gmod in crate.files and (
            item in crate.defs.get(gmod, ()) or item in crate.imports.get(gmod, {})
        ):
            return locate(crate, target + full[k:], seen)
    return mod


def resolve(crate, modpath, inline, segs, glob=False):
    """The module a path (or a glob import's path) in module `modpath` depends on."""
    full = absolute(crate, modpath, inline, segs)
    if full is None:
        return None
    if glob:
        k = len(full)
        while k > 0 and tuple(full[:k]) not in crate.files:
            k -= 1
        return tuple(full[:k])
    return locate(crate, full)


def scan_edges(crate):
    for modpath, path in crate.files.items():
        text = crate.texts[modpath]
        lines = inline_module_at(text)
        found = []  # (line index, path segments, is a glob import, what)
        used = set()
        for m in USE.finditer(text):
            ln = text.count("\n", 0, m.start())
            for bound, segs in expand_use_tree(m.group(1)):
                what = "use " + "::".join(segs) + ("::*" if bound == "*" else "")
                found.append((ln, segs, bound == "*", what))
            used.update(range(m.start(), m.end()))
        path_re = re.compile(r"(?<![A-Za-z0-9_$:])(" + IDENT + r")((?:\s*::\s*" + IDENT + r")+)")
        for m in path_re.finditer(text):
            if m.start() in used:
                continue
            segs = [m.group(1)] + [x.strip() for x in m.group(2).split("::") if x.strip()]
            found.append((text.count("\n", 0, m.start()), segs, False, "::".join(segs)))
        for ln, segs, glob, what in found:
            inline = lines[ln] if ln < len(lines) else []
            target = resolve(crate, modpath, inline, segs, glob)
            if target is None or target == modpath:
                continue
            key = (modpath, target)
            if key not in crate.edges:
                rel = os.path.relpath(path, crate.base)
                crate.edges[key] = f"{rel}:{ln + 1} {what}"


def tarjan(nodes, succ):
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]
    sys.setrecursionlimit(10000)

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in succ.get(v, ()):
            if w not in index:
                strong(w)
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
            out.append(comp)

    for v in nodes:
        if v not in index:
            strong(v)
    return out


def name(modpath):
    return "::".join(modpath) if modpath else "crate"


def shortest_cycle(comp, succ):
    """One shortest cycle through the component's first module (for the summary)."""
    start = min(comp, key=name)
    inside = set(comp)
    prev, queue = {start: None}, [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(succ.get(v, ()), key=name):
            if w not in inside:
                continue
            if w == start:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return list(reversed(path)) + [start]
            if w not in prev:
                prev[w] = v
                queue.append(w)
    return []


def members(root):
    text = (root / "Cargo.toml").read_text()
    m = re.search(r"members\s*=\s*\[(.*?)\]", text, re.S)
    if not m:
        return ["."]
    return re.findall(r'"([^"]+)"', m.group(1))


def crate_roots(crate_dir):
    src = crate_dir / "src"
    roots = []
    for f in ("lib.rs", "main.rs"):
        if (src / f).exists():
            roots.append(src / f)
    if (src / "bin").is_dir():
        for p in sorted((src / "bin").iterdir()):
            if p.suffix == ".rs":
                roots.append(p)
            elif (p / "main.rs").exists():
                roots.append(p / "main.rs")
    return roots


def analyse(cdir, rootfile, label):
    """The crate's module graph from one root: (crate, strongly connected components > 1)."""
    crate = Crate(label, rootfile)
    crate.base = cdir
    discover(crate, rootfile, (), True)
    for modpath, text in list(crate.texts.items()):
        index_module(crate, modpath, text)
    scan_edges(crate)
    succ = {}
    for a, b in crate.edges:
        succ.setdefault(a, set()).add(b)
    comps = [c for c in tarjan(sorted(crate.files, key=name), succ) if len(c) > 1]
    return crate, comps, succ


SELF_TEST = {
    "Cargo.toml": '[package]\nname = "t"\n',
    "src/lib.rs": "mod a;\nmod b;\nmod c;\nmod d;\npub use a::X;\n",
    # a <-> b is a cycle (through a use list and an inline path).
    "src/a.rs": "use crate::{b::{Y as Z}, d};\npub struct X;\nfn f() -> Z { d::g() }\n",
    "src/b.rs": "pub struct Y;\nfn f() -> super::a::X { super::a::X }\n",
    # c names `crate::X`, which the root re-exports from a: an edge to a, not to the root.
    # Comments, strings and test modules' `super::*` add nothing.
    "src/c.rs": (
        'use crate::X;\n// crate::b::Y\nconst S: &str = "crate::b::Y";\n'
        "#[cfg(test)]\nmod tests {\n    use super::*;\n}\n"
    ),
    "src/d.rs": "pub fn g() -> crate::b::Y { crate::b::Y }\n",
}


def self_test():
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for rel, text in SELF_TEST.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        crate, comps, _ = analyse(root, root / "src/lib.rs", "t")
        edges = {(name(a), name(b)) for a, b in crate.edges}
        want = {
            ("crate", "a"),
            ("a", "b"),
            ("a", "d"),
            ("b", "a"),
            ("c", "a"),
            ("d", "b"),
        }
        cycles = [sorted(map(name, c)) for c in comps]
        ok = edges == want and cycles == [["a", "b", "d"]]
        print(f"edges {sorted(edges)}\ncycles {cycles}\n{'ok' if ok else 'FAILED'}")
        return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("crates", nargs="*", help="crate directories (default: workspace members)")
    ap.add_argument("--workspace", default=None, help="workspace root (default: the script's repo)")
    ap.add_argument("--edges", action="store_true", help="print every module edge too")
    ap.add_argument("--self-test", action="store_true", help="check the script itself")
    args = ap.parse_args()
    if args.self_test:
        return self_test()
    root = Path(args.workspace or Path(__file__).resolve().parent.parent)
    dirs = args.crates or members(root)
    total = 0
    for d in dirs:
        cdir = (root / d) if not Path(d).is_absolute() else Path(d)
        if not (cdir / "Cargo.toml").exists():
            print(f"{d}: no Cargo.toml", file=sys.stderr)
            return 2
        for rootfile in crate_roots(cdir):
            label = d if rootfile.name == "lib.rs" else f"{d} ({os.path.relpath(rootfile, cdir)})"
            crate, comps, succ = analyse(cdir, rootfile, label)
            total += len(comps)
            status = f"{len(comps)} cycle(s)" if comps else "no cycles"
            print(f"{label}: {len(crate.files)} modules, {len(crate.edges)} edges, {status}")
            if args.edges:
                for (a, b), where in sorted(crate.edges.items(), key=lambda e: (name(e[0][0]), name(e[0][1]))):
                    print(f"  {name(a)} -> {name(b)}    ({where})")
            for i, comp in enumerate(sorted(comps, key=lambda c: sorted(map(name, c))), 1):
                mods = sorted(comp, key=name)
                print(f"  cycle {i}: {{{', '.join(map(name, mods))}}}")
                cyc = shortest_cycle(comp, succ)
                if cyc:
                    print(f"    e.g. {' -> '.join(map(name, cyc))}")
                inside = set(comp)
                for (a, b), where in sorted(crate.edges.items(), key=lambda e: (name(e[0][0]), name(e[0][1]))):
                    if a in inside and b in inside:
                        print(f"    {name(a)} -> {name(b)}    ({where})")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
