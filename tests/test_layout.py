"""The package layout is its architecture: the public API, no import circles, one owner of time.

These tests read the source (``ast``) rather than trusting conventions: an import added anywhere,
even inside a function, that closes a circle between two modules of the package fails here.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import ann2snn

PKG = Path(ann2snn.__file__).resolve().parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every ann2snn module that ``path`` imports, at any depth of the file (functions included)."""
    tree = ast.parse(path.read_text())
    me = _module_name(path)
    pkg = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("ann2snn")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("ann2snn"):
                continue
            for a in node.names:  # `from ann2snn import distributed` imports a module
                sub = f"{base}.{a.name}"
                out.add(sub if (PKG.parent / Path(*sub.split("."))).with_suffix(".py").exists()
                        or (PKG.parent / Path(*sub.split(".")) / "__init__.py").exists() else base)
    out.discard(me)
    return out


def _graph() -> dict[str, set[str]]:
    mods = {_module_name(p): p for p in PKG.rglob("*.py")}
    # a package's __init__ re-exports; edges into "ann2snn" itself are only the facade
    return {m: {d for d in _imports(p) if d in mods and d != "ann2snn"} for m, p in mods.items()
            if m != "ann2snn"}


def test_no_import_circles_anywhere_in_the_package():
    g = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)


def test_the_graph_sees_function_level_imports():
    """The checks here would be vacuous if lazy imports were missed: the commands import the
    pipeline and their library modules inside functions, for a fast ``--help``."""
    g = _graph()
    assert "ann2snn.app.pipeline" in g["ann2snn.app.commands"]
    assert "ann2snn.energy" in g["ann2snn.app.cli"]


# The library's floors, lowest first: a module imports only from its own floor or below.  The
# application (ann2snn.app) stands on all of them; nothing in the library imports from it.
LAYERS = [
    {"ann2snn._compat", "ann2snn._checks", "ann2snn.progress", "ann2snn.shards", "ann2snn.results"},  # utilities, result types
    {"ann2snn.quant", "ann2snn.placements", "ann2snn.layers", "ann2snn.neurons", "ann2snn.graph"},  # activations, sites, operators, tracing
    {"ann2snn.rules", "ann2snn.passes", "ann2snn.presets", "ann2snn.models"},  # conversion pieces, the zoo
    {"ann2snn.convert", "ann2snn.simulate", "ann2snn.verify"},  # conversion, time
    {"ann2snn.metrics", "ann2snn.energy", "ann2snn.frontier", "ann2snn.generate"},  # measurement, generation
]


def _floor(module: str) -> int | None:
    for i, floor in enumerate(LAYERS):
        if module in floor or any(module.startswith(m + ".") for m in floor):
            return i
    return None


def test_every_library_module_has_a_floor():
    library = [m for m in _graph() if not m.startswith("ann2snn.app") and m != "ann2snn.__main__"]
    assert [m for m in library if _floor(m) is None] == []


def test_the_library_never_imports_the_application_and_no_floor_imports_a_higher_one():
    bad = []
    for m, deps in _graph().items():
        if m.startswith("ann2snn.app") or m == "ann2snn.__main__":
            continue
        for d in deps:
            if d.startswith("ann2snn.app") or (_floor(d) or 0) > (_floor(m) or 0):
                bad.append(f"{m} -> {d}")
    assert bad == []


def test_import_ann2snn_loads_no_application_module_and_no_torch():
    """``import ann2snn`` is cheap (the CLI handles Ctrl-C before torch loads); using the whole
    public API loads the library only."""
    code = ("import sys, ann2snn\n"
            "assert 'torch' not in sys.modules\n"
            "[getattr(ann2snn, n) for n in ann2snn.__all__]\n"
            "print(sorted(m for m in sys.modules if m.startswith('ann2snn.app')))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


@pytest.mark.parametrize("name", ["quantize", "convert", "Simulator", "evaluate", "evaluate_ann", "evaluate_snn",
                                  "evaluate_table", "measure_energy", "PRESETS", "create_model", "list_models",
                                  "Evaluation", "Accuracy", "Table", "VerifyResult", "Frontier"])
def test_public_api_names(name):
    obj = getattr(ann2snn, name)
    assert name in ann2snn.__all__
    assert not isinstance(obj, type(ann2snn)), f"ann2snn.{name} is a module, not the API object"


def test_convert_is_the_function_and_the_module_still_imports():
    from ann2snn import convert
    from ann2snn.presets import PRESETS

    assert callable(convert) and convert.__module__ == "ann2snn.convert"
    assert set(PRESETS) == {"exact", "rate", "per_step"} and ann2snn.PRESETS is PRESETS


def _calls_in(path: Path, attr: str) -> list[int]:
    tree = ast.parse(path.read_text())
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr == attr]


@pytest.mark.parametrize("module", sorted(str(p.relative_to(PKG)) for p in PKG.rglob("*.py")
                                          if p.name != "simulate.py"))
def test_only_the_simulator_advances_time_or_resets(module):
    """Nothing outside simulate.py ticks a clock or resets a network's state (training's reset of a
    direct SNN after each batch is the model's own business, not simulation time)."""
    path = PKG / module
    assert not _calls_in(path, "tick"), f"{module} ticks the clock"
    resets = _calls_in(path, "reset_net")
    if module not in ("app/train.py", "models/direct.py"):
        assert not resets, f"{module} calls reset_net at lines {resets}"


def test_energy_imports_no_private_names():
    private = [f"{path.name}: {n.module}.{a.name}" for path in sorted((PKG / "energy").glob("*.py"))
               for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom)
               and (n.module or "").startswith("ann2snn") for a in n.names if a.name.startswith("_")]
    assert not private, private


def test_energy_is_a_measurement_package_apart_from_the_model_zoo():
    """The energy meter's pieces (hooks, analog flow, FLOPs, accounting, results, constants) are
    modules of the measurement floor; none reaches into the model zoo (a directly trained SNN is
    recognised by its simulator's preset) or is imported from a lower floor."""
    g = _graph()
    energy = sorted(m for m in g if m == "ann2snn.energy" or m.startswith("ann2snn.energy."))
    assert {"ann2snn.energy.meter", "ann2snn.energy.flow", "ann2snn.energy.accounting",
            "ann2snn.energy.flops"} <= set(energy)
    assert all(_floor(m) == _floor("ann2snn.metrics") for m in energy)
    assert [f"{m} -> {d}" for m in energy for d in g[m] if d.startswith("ann2snn.models")] == []
    lower = [f"{m} -> {d}" for m, deps in g.items() for d in deps
             if d in energy and (_floor(m) is not None and _floor(m) < _floor("ann2snn.energy"))]
    assert lower == []


def test_no_test_module_imports_another_or_conftest():
    """Test modules share helpers through ``tests/helpers.py`` and fixtures through conftest.py, never
    by importing each other: importing a test module runs its module-level code (hypothesis
    strategies, constants) a second time under another name, ties one module's tests to another's
    private helpers, and ``from conftest import …`` works only under pytest's default import mode."""
    tests = Path(__file__).resolve().parent
    own = {p.stem for p in tests.glob("*.py")} - {"helpers"}  # test modules, conftest, scripts
    found = []
    for path in sorted(tests.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            found += [f"{path.name}:{node.lineno} imports {n}" for n in names if n.split(".")[0] in own]
    assert found == []
    assert "test_bad_input" in own and "conftest" in own  # the check sees the modules it guards
