"""The layering of the three packages, checked from their source with ``ast``.

Every module belongs to one stage; stages are declared once, here, in the order data flows
through them (``docs/architecture.md`` draws the picture). A module may import modules of its
own stage or of a stage below it, never one above; no import cycle between modules; no import of
a ``_private`` name from another package; and no project import inside a function body (a
function-level import of a project module only ever hides a cycle). Function-level imports of
optional or heavy third-party libraries (matplotlib, scipy, ray, jax in a measurement) are fine.
"""
from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("hw_targets", "explorer", "passes")

# (stage, module prefixes), lowest first: a module's stage is the one whose prefix matches it most
# closely ("explorer" alone is the public API at the top; "explorer.graph" is the second stage).
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("data: targets", ("hw_targets",)),
    ("graph: StableHLO -> graph", ("explorer.graph",)),
    ("counting: graph -> work per op", ("explorer.costs",)),
    ("front ends: JAX fn / files / compilers -> program", ("explorer.frontend",)),
    ("cost model: work + target -> seconds", ("explorer.model",)),
    ("rendering: units, tables, traces, plots", ("explorer.report",)),
    ("passes: program + plan + target -> plan", ("passes",)),
    ("pricing: plan on a target -> Estimate", ("explorer.pricing",)),
    ("workflows: compare, sweep, search, explore", ("explorer.workflows",)),
    ("interface: public API and command line", ("explorer",)),
)


@dataclass(frozen=True)
class Import:
    importer: str        # module doing the import
    target: str          # project module imported
    names: tuple[str, ...]
    in_function: bool
    line: int


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_modules(root: Path = ROOT, packages=PACKAGES) -> dict[str, Path]:
    out = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            out[module_name(path, root)] = path
    return out


def _resolve(importer: str, is_package: bool, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """Project imports of one module: ``import a.b`` / ``from a import b`` resolved to the modules they load."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] in PACKAGES:
                        found.append(Import(name, alias.name, (), in_function, child.lineno))
            elif isinstance(child, ast.ImportFrom):
                base = _resolve(name, is_package, child.module, child.level)
                if base.split(".")[0] not in PACKAGES:
                    continue
                loose = []
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    if sub in modules:
                        found.append(Import(name, sub, (), in_function, child.lineno))
                    else:
                        loose.append(alias.name)
                if loose:
                    found.append(Import(name, base, tuple(loose), in_function, child.lineno))
            visit(child, inner)

    visit(tree, False)
    return found


def stage_of(module: str, stages=STAGES) -> int:
    best, best_len = -1, -1
    for i, (_, prefixes) in enumerate(stages):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    return best


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a self-import): each is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return out


def violations(imports: list[Import], stages=STAGES) -> dict[str, list[str]]:
    """Every broken rule, as readable lines, by rule."""
    out: dict[str, list[str]] = {"unstaged": [], "upward": [], "private": [], "in_function": [], "cycle": []}
    edges: dict[str, set[str]] = {}
    for imp in imports:
        if imp.target == imp.importer:
            continue
        edges.setdefault(imp.importer, set()).add(imp.target)
        s_from, s_to = stage_of(imp.importer, stages), stage_of(imp.target, stages)
        where = f"{imp.importer}:{imp.line} imports {imp.target}" + (f" ({', '.join(imp.names)})" if imp.names else "")
        if s_from < 0 or s_to < 0:
            out["unstaged"].append(where)
        elif s_to > s_from:
            out["upward"].append(f"{where}: stage {stages[s_from][0]!r} below {stages[s_to][0]!r}")
        if imp.importer.split(".")[0] != imp.target.split(".")[0]:
            private = [n for n in imp.names if n.startswith("_")] + \
                [p for p in imp.target.split(".") if p.startswith("_") and p != "__init__"]
            if private:
                out["private"].append(f"{where}: private name(s) {', '.join(private)} of another package")
        if imp.in_function:
            out["in_function"].append(where)
    out["cycle"] = [" -> ".join(c) for c in cycles(edges)]
    return out


def project_imports(root: Path = ROOT) -> list[Import]:
    modules = project_modules(root)
    return [imp for name, path in modules.items() for imp in imports_of(name, path, modules)]


# -- the project ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def found() -> dict[str, list[str]]:
    return violations(project_imports())


def test_every_module_has_a_stage():
    missing = [m for m in project_modules() if stage_of(m) < 0]
    assert not missing, f"modules outside every declared stage: {missing}"


@pytest.mark.parametrize("rule", ["unstaged", "upward", "private", "in_function", "cycle"])
def test_layering_rule(found, rule):
    assert not found[rule], f"{rule}:\n  " + "\n  ".join(found[rule])


def test_data_package_imports_nothing_of_the_project():
    imps = [i for i in project_imports() if i.importer.startswith("hw_targets") and not i.target.startswith("hw_targets")]
    assert not imps, [f"{i.importer} imports {i.target}" for i in imps]


def test_every_module_imports_first(tmp_path):
    """Any module can be the first one a script imports (package ``__init__`` files run before their modules,
    so a cycle through them would only show at run time): each is imported in a fresh set of project modules."""
    import subprocess

    names = sorted(m for m in project_modules() if not m.endswith("__main__"))   # __main__ runs the CLI
    script = (
        "import sys, importlib\n"
        "import jax, numpy, tabulate\n"            # heavy third-party modules stay loaded between attempts
        f"names = {names!r}\n"
        "failed = []\n"
        "for name in names:\n"
        "    for m in [m for m in sys.modules if m.split('.')[0] in ('explorer', 'passes', 'hw_targets')]:\n"
        "        del sys.modules[m]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {type(exc).__name__}: {exc}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n")
    res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]


# -- the checker itself can fail -----------------------------------------------------------------
def _synthetic(root: Path, files: dict[str, str]) -> list[Import]:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    modules = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    return [imp for name, path in modules.items() for imp in imports_of(name, path, modules)]


TOY_STAGES = (("low", ("hw_targets",)), ("mid", ("passes",)), ("top", ("explorer",)))


def test_checker_catches_a_cycle(tmp_path):
    imps = _synthetic(tmp_path, {
        "passes/__init__.py": "", "passes/a.py": "from . import b\n", "passes/b.py": "from passes import a\n"})
    found = violations(imps, TOY_STAGES)
    assert found["cycle"] == ["passes.a -> passes.b"]


def test_checker_catches_an_upward_import(tmp_path):
    imps = _synthetic(tmp_path, {
        "hw_targets/__init__.py": "", "hw_targets/t.py": "import explorer.x\n",
        "explorer/__init__.py": "", "explorer/x.py": "X = 1\n"})
    found = violations(imps, TOY_STAGES)
    assert len(found["upward"]) == 1 and "hw_targets.t:1 imports explorer.x" in found["upward"][0]
    assert not found["cycle"]


def test_checker_catches_function_level_and_private_imports(tmp_path):
    imps = _synthetic(tmp_path, {
        "hw_targets/__init__.py": "_hidden = 1\n",
        "explorer/__init__.py": "",
        "explorer/x.py": "def f():\n    from hw_targets import _hidden\n    return _hidden\n"})
    found = violations(imps, TOY_STAGES)
    assert found["in_function"] == ["explorer.x:2 imports hw_targets (_hidden)"]
    assert len(found["private"]) == 1 and "_hidden" in found["private"][0]
    assert not found["upward"]


def test_checker_resolves_relative_imports_to_modules(tmp_path):
    imps = _synthetic(tmp_path, {
        "passes/__init__.py": "", "passes/sub/__init__.py": "from .leaf import Y\n",
        "passes/sub/leaf.py": "from ..other import Z\nY = Z\n", "passes/other.py": "Z = 1\n"})
    targets = {(i.importer, i.target) for i in imps}
    assert ("passes.sub", "passes.sub.leaf") in targets
    assert ("passes.sub.leaf", "passes.other") in targets
