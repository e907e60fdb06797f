"""The house: varbench's packages form layers, and a module imports only from its own package or a lower layer.

Read statically (`ast`, nothing imported or executed). Two checks:

- no import cycle between modules, counting the imports at module level (the ones that run on import);
- no cycle between packages and no upward import, counting every import statement, function-local ones included:
  a local import defers the cost of a dependency, not the dependency itself.

There is no allow-list: an import that breaks a layer is fixed by moving code down, never excused here.

ARCHITECTURE.md draws the same layers and says why each sits where it does.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "varbench"

# Lowest first. A package may import its own modules and any package of a lower layer; packages of one layer are
# peers that do not import each other. "varbench" is the package's own __init__ (the notebook facade).
LAYERS = [
    ("utils", "layout", "registry"),                 # foundations: no model code
    ("preemption",),                                  # the signals a Slurm job gets (logs through utils)
    ("ops",),                                         # the math of each op: reference beside kernel adapters
    ("modules",),                                     # shared layers: RMS norms, short convolution, rotary
    ("mixers", "intra"),                              # inter-scale mixers, intra-scale variants
    ("backbones", "tokenizers"),                      # the models
    ("build", "compat", "official"),                  # models built from the registry; golden parity; official files
    ("data",),                                        # data sets
    ("eval",),                                        # measurement: FLOPs, timing, metrics, likelihood
    ("training",),                                    # the training loop (records eval's NLL while it trains)
    ("runs", "analysis", "config_schema"),            # run folders and loading; records -> tables; config ranges
    ("init_from",),                                   # a training start from another run or an official file
    ("frozen_tokenizer",),                            # task=main's tokenizer steps in their shared folder
    ("tasks",),                                       # one file per `task=`, one dispatch
    ("grid",),                                        # grid cells around a task
    ("resolvers",),                                   # the OmegaConf resolvers the configs use
    ("cli", "varbench"),                              # the command and the Python API
]

def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py") if "configs" not in p.relative_to(ROOT).parts}


def imported_modules(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The varbench modules one import statement names (`from a import b` names a.b when b is a module, else a)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in MODULES]
    if node.level:  # relative: resolve against this module's package
        package = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
        base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    found = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
    return found or ([base] if base in MODULES else [])


@functools.cache
def edges(module_level_only: bool) -> frozenset[tuple[str, str]]:
    """(importer, imported) for every import of a varbench module by another one."""
    out = set()
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        nodes = tree.body if module_level_only else ast.walk(tree)
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                out |= {(module, target) for target in imported_modules(module, node) if target != module}
    return frozenset(out)


def package(module: str) -> str:
    """The first component under varbench (varbench.ops.ssd.kernel -> ops); the package root itself -> varbench."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "varbench"


def rank(pkg: str) -> int:
    for i, layer in enumerate(LAYERS):
        if pkg in layer:
            return i
    raise AssertionError(f"varbench/{pkg} is in no layer: add it to LAYERS here and to ARCHITECTURE.md")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def as_graph(pairs) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for a, b in pairs:
        graph.setdefault(a, set()).add(b)
    return graph


def test_the_parser_sees_local_and_module_level_imports():
    # the checks below are only as good as this: a known module-level and a known function-local import are found
    assert ("varbench.build", "varbench.registry") in edges(module_level_only=True)
    local = edges(module_level_only=False) - edges(module_level_only=True)
    assert ("varbench.grid", "varbench.utils.records") in local


def test_no_import_cycle_between_modules():
    assert cycles(as_graph(edges(module_level_only=True))) == []


def test_no_import_cycle_between_packages():
    pairs = {(package(a), package(b)) for a, b in edges(module_level_only=False) if package(a) != package(b)}
    assert cycles(as_graph(pairs)) == []


def architecture_drawing() -> list[tuple[str, ...]]:
    """The layers as ARCHITECTURE.md draws them (its first code block, top layer first; a line indented as deep as
    the descriptions continues the one above), lowest first, as LAYERS lists them."""
    block = (ROOT.parent / "ARCHITECTURE.md").read_text().split("```")[1]
    heads = [re.split(r"\s{2,}", line.strip())[0] for line in block.splitlines()
             if line.strip() and not line.startswith(" " * 20)]
    names = [head.replace("varbench/__init__ (the Python API)", "varbench") for head in reversed(heads)]
    return [tuple(name.strip() for name in head.split(",")) for head in names]


def test_architecture_md_draws_the_layers_this_test_checks():
    assert architecture_drawing() == LAYERS


def test_every_package_is_in_a_layer():
    for module in MODULES:
        rank(package(module))


def test_imports_go_down_the_layers():
    upward = sorted(f"{a} -> {b}" for a, b in edges(module_level_only=False)
                    if package(a) != package(b) and rank(package(b)) >= rank(package(a)))
    assert upward == [], "upward or peer imports (see LAYERS):\n" + "\n".join(upward)


def test_tasks_do_not_import_other_tasks():
    # one dispatch (varbench/tasks/__init__.py) calls the tasks; what two tasks share lives below tasks
    tasks = {m for m in MODULES if m.startswith("varbench.tasks.")}
    crossing = sorted(f"{a} -> {b}" for a, b in edges(module_level_only=False) if a in tasks and b in tasks)
    assert crossing == [], "tasks importing tasks:\n" + "\n".join(crossing)
