"""How the packages depend on each other: `analysis` uses `study`, never the reverse (but for the
two command lines whose users expect the report at the end), modules import without cycles at any
level (imports inside functions count), every module says what it exports, no private name is
imported across modules, and the trainer loads no audio library, so a trial runs where only torch
is installed."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("study", "analysis")
OURS = (*PACKAGES, "tests")
# the composition root: the command lines that write the report when they end (study.run at the end of a
# study, study.evaluate after scoring one again) are the only study modules that import the analysis
COMPOSITION_ROOT = {"study/run.py", "study/evaluate.py"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text())
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names]
            # "from . import x" imports the submodule x; "from .m import f" imports m
            found += [(name if _is_module(name) else base, id(node) in top_level) for name in names]
    return found


def _is_module(name: str) -> bool:
    path = REPO / Path(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _files():
    for package in PACKAGES:
        yield from sorted((REPO / package).rglob("*.py"))


def test_study_never_imports_analysis():
    upward = []
    for path in (REPO / "study").rglob("*.py"):
        relative = str(path.relative_to(REPO))
        for name, _ in _imports(path):
            if name.split(".")[0] == "analysis" and relative not in COMPOSITION_ROOT:
                upward.append(f"{relative} imports {name}")
    assert not upward, "study must not depend on analysis:\n" + "\n".join(upward)


def _graph(*, top_level_only: bool, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """module -> the modules of ``packages`` it imports (at module level only, or anywhere)."""
    return {
        _module_name(path): {
            name
            for name, top in _imports(path)
            if (top or not top_level_only) and name.split(".")[0] in packages and _is_module(name)
        }
        for path in _files()
        if _module_name(path).split(".")[0] in packages
    }


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if target == node or target == node.rpartition(".")[0]:
                continue  # a package's own __init__ is loaded first by the import system, not a cycle
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target) :] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def test_module_level_imports_have_no_cycle():
    cycles = _cycles(_graph(top_level_only=True))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_cycle_counting_imports_inside_functions_but_through_the_composition_root():
    """The command lines study.run and study.evaluate call the analysis, which reads studies through study:
    that is the one loop allowed, at the composition root; any other cycle is a hidden dependency."""
    graph = _graph(top_level_only=False)
    for root in COMPOSITION_ROOT:
        graph[_module_name(REPO / root)] = {n for n in graph[_module_name(REPO / root)] if not n.startswith("analysis")}
    cycles = _cycles(graph)
    assert not cycles, "import cycles (imports inside functions included):\n" + "\n".join(cycles)


def test_every_module_declares_all():
    lacking = []
    for path in _files():
        tree = ast.parse(path.read_text())
        names = {
            t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)
        }
        if path.name not in ("__init__.py", "__main__.py") and "__all__" not in names:
            lacking.append(str(path.relative_to(REPO)))
    assert not lacking, "modules without __all__:\n" + "\n".join(lacking)


def test_no_private_name_is_imported_across_modules():
    """`from m import _x` reaches into another of our modules' internals, tests included."""
    found = []
    for path in [*_files(), *sorted((REPO / "tests").rglob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            ours = isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] in OURS)
            if ours:
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private:
                    found.append(
                        f"{path.relative_to(REPO)}: from {'.' * node.level}{node.module or ''} import {private}"
                    )
    assert not found, "private names imported across modules:\n" + "\n".join(found)


def test_the_config_layer_imports_no_trainer_search_or_runner():
    """These modules read their settings from study.config's TrialConfig: it imports none of them."""
    graph = _graph(top_level_only=False, packages=("study",))
    above = {"study.train", "study.search", "study.run", "study.tuners", "study.trial_data", "study.plan"}
    assert not graph["study.config"] & above


def test_the_trainer_loads_no_audio_library_and_no_analysis():
    code = (
        "import sys, study.train, study.tensors, study.bench; "
        "print(sorted(m for m in ('librosa', 'soundfile', 'soxr', 'analysis') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
