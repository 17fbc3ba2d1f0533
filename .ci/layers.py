#!/usr/bin/env python3
"""Checks builder/src's layering: imports point down the layer list, never up,
and no two modules import each other (directly or in a longer circle). Also
checks ARCHITECTURE.md: under 15000 bytes, and every `builder/src/...` path it
names in backticks exists.

A module is a file under a layer folder (pipeline/oci/* counts as
pipeline/oci). An edge is any `crate::LAYER::MODULE` path in its code,
tests included. Exit 1 with every violation listed."""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SRC = ROOT / "builder" / "src"
ARCH = ROOT / "ARCHITECTURE.md"
ARCH_MAX = 15000
# Lowest first. Modules in one layer may use each other (without cycles);
# a module may use any lower layer.
LAYERS = ["host", "recipe", "inputs", "pipeline", "media", "release", "vm",
          "field", "build", "cli", "lib", "main"]
RANK = {name: i for i, name in enumerate(LAYERS)}
# vm sits beside the pipeline: it may only use host.
ONLY = {"vm": {"host", "vm"}}

def module_of(path: pathlib.Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "mod":
        parts = parts[:-1]
    if len(parts) == 1:
        return parts[0]
    return "/".join(parts[:2])

def layer_of(module: str) -> str:
    return module.split("/")[0]

ENV_READ = re.compile(r"\benv::(var|var_os|vars|vars_os)\b")
REF = re.compile(r"\bcrate::([a-z_0-9]+)(?:::([a-z_0-9]+))?")

BACKTICKED = re.compile(r"`([^`]*)`")

def architecture_problems() -> list:
    """ARCHITECTURE.md stays a short map (under ARCH_MAX bytes) and names
    only builder/src paths that exist."""
    size = len(ARCH.read_bytes())
    problems = []
    if size >= ARCH_MAX:
        problems.append(f"ARCHITECTURE.md: {size} bytes; keep it under {ARCH_MAX} (details go to docs/)")
    text = ARCH.read_text()
    lines = text.splitlines()
    # Over the whole text: a backticked span may wrap onto the next line.
    for m in BACKTICKED.finditer(text):
        for word in m.group(1).split():
            word = word.rstrip(",.;:)")
            if word.startswith("builder/src/") and not (ROOT / word).exists():
                lineno = text.count("\n", 0, m.start()) + 1
                problems.append(f"ARCHITECTURE.md:{lineno}: {word} does not exist: {lines[lineno - 1].strip()}")
    return problems

def production_lines(f: pathlib.Path):
    """(line number, code) of every line of `f` outside an item marked
    #[cfg(test)] (and outside a tests.rs), comments cut off."""
    if f.name == "tests.rs":
        return
    depth, test_depth, pending = 0, None, False
    for lineno, line in enumerate(f.read_text().splitlines(), 1):
        code = line.split("//")[0]
        if re.match(r"\s*#\[cfg\(test\)\]", code) and test_depth is None:
            pending = True
        if test_depth is None and not pending:
            yield lineno, code
        # Braces inside string and char literals (b"}\n", '{') do not count.
        braces = re.sub(r"'[{}]'", "", re.sub(r'"(?:\\.|[^"\\])*"', '""', code))
        for ch in braces:
            if ch == "{":
                if pending:
                    test_depth, pending = depth, False
                depth += 1
            elif ch == "}":
                depth -= 1
                if test_depth is not None and depth == test_depth:
                    test_depth = None

# The volume stage (pipeline/volume.rs) is the only place a volume is
# packed, stored in or looked up from the stage cache: the stages that make
# volumes (base, apps, models) call its wrapper and reach into no cache
# code of their own or of each other.
VOLUME_STAGE = "pipeline/volume.rs"
VOLUME_CACHE_CALLS = re.compile(r"\b(store_volume_image|volume_image_path|store_moved)\b|\"mksquashfs \{[a-z]")
VOLUME_MAKERS = ("pipeline/squashfs.rs", "pipeline/layers.rs", "pipeline/volumes.rs")
STAGECACHE_USE = re.compile(r"\bstagecache::(?!key\b)[a-z_]+")

def volume_cache_problems() -> list:
    problems = []
    for f in sorted(SRC.rglob("*.rs")):
        rel = str(f.relative_to(SRC))
        if rel in (VOLUME_STAGE, "inputs/stagecache.rs"):
            continue
        for lineno, code in production_lines(f):
            m = VOLUME_CACHE_CALLS.search(code)
            if m:
                problems.append(f"{rel}:{lineno}: {m.group(0)} outside {VOLUME_STAGE}; make volumes through the volume stage (volume::squashfs, volume::cached)")
            m = STAGECACHE_USE.search(code)
            if m and rel in VOLUME_MAKERS:
                problems.append(f"{rel}:{lineno}: {m.group(0)}: a volume's stage-cache lookups and stores go through volume::cached")
    return problems

# The format table (media/mod.rs, `media::FORMATS`) is the only place a
# format's name or extension is spelled: a literal "raw", "iso", "qcow2"
# or "img", a literal ending in one as an extension, or a list of them in
# a message, anywhere else in production code is an error. media/ holds
# the table and its writers; host/qcow2.rs checks qcow2 files from outside
# for the qcow2 row (qemu-img's JSON names its driver).
FORMAT_HOME = ("media/", "host/qcow2.rs")
FORMAT_WORDS = r"(?:raw|iso|qcow2|img)"
EXTENSIONS = r"(?:raw|iso|qcow2)"
FORMAT_LITERAL = re.compile(
    r'"' + FORMAT_WORDS + r'"'                       # "qcow2"
    + r'|\}\.' + EXTENSIONS + r'"'                 # "{stem}.raw"
    + r'|\.' + EXTENSIONS + r'(?:,| or| and|/)\s*\.' + EXTENSIONS  # ".raw, .iso"
    , re.IGNORECASE)

def format_name_problems() -> list:
    problems = []
    for f in sorted(SRC.rglob("*.rs")):
        rel = str(f.relative_to(SRC))
        if rel.startswith(FORMAT_HOME):
            continue
        for lineno, code in production_lines(f):
            m = FORMAT_LITERAL.search(code)
            if m:
                problems.append(f"{rel}:{lineno}: {m.group(0)}: a format name spelled outside the format table; read it from a row of media::FORMATS")
    return problems

def main() -> int:
    edges = {}
    problems = []
    for f in sorted(SRC.rglob("*.rs")):
        m = module_of(f)
        edges.setdefault(m, set())
        text = f.read_text()
        for lineno, line in enumerate(text.splitlines(), 1):
            code = line.split("//")[0]
            for a, b in REF.findall(code):
                if a not in RANK:
                    continue  # crate-root items (InputError, assert_golden)
                target = a if (b == "" or a in ("build", "lib", "main")) else f"{a}/{b}"
                if b and b[0].isupper():
                    target = a
                if target == m or target.startswith(m + "/") or m.startswith(target + "/"):
                    continue
                la, lb = layer_of(m), layer_of(target)
                edges[m].add(target)
                allowed = ONLY.get(la)
                if allowed is not None and lb not in allowed:
                    problems.append(f"{f.relative_to(SRC)}:{lineno}: {m} ({la}) may use only {sorted(allowed)}, uses {target}")
                elif RANK[lb] > RANK[la]:
                    problems.append(f"{f.relative_to(SRC)}:{lineno}: {m} ({la}) imports upward: {target} ({lb})")
    # Only cli/ reads the process environment.
    for f in sorted(SRC.rglob("*.rs")):
        rel = f.relative_to(SRC)
        if rel.parts[0] == "cli":
            continue
        for lineno, code in production_lines(f):
            if ENV_READ.search(code):
                problems.append(f"{rel}:{lineno}: reads the process environment; only cli/ may (pass the value down)")
    problems += volume_cache_problems()
    problems += format_name_problems()
    # Cycles between modules.
    state = {}
    stack = []
    def visit(n):
        state[n] = 1
        stack.append(n)
        for t in sorted(edges.get(n, ())):
            if state.get(t) == 1:
                cyc = stack[stack.index(t):] + [t]
                problems.append("module cycle: " + " -> ".join(cyc))
            elif t in edges and state.get(t) is None:
                visit(t)
        stack.pop()
        state[n] = 2
    for n in sorted(edges):
        if state.get(n) is None:
            visit(n)
    problems += architecture_problems()
    for p in sorted(set(problems)):
        print(p)
    if problems:
        print(f"layers: {len(set(problems))} problem(s)", file=sys.stderr)
        return 1
    print(f"layers: {len(edges)} modules, no upward import, no cycle; ARCHITECTURE.md {len(ARCH.read_bytes())} bytes, its paths exist")
    return 0

if __name__ == "__main__":
    sys.exit(main())
