import pkgutil
import subprocess
import sys

import replearn


def test_library_never_imports_an_orchestrator() -> None:
    """Importing every module of replearn leaves zenml and dvc out of sys.modules."""
    modules = [m.name for m in pkgutil.walk_packages(replearn.__path__, "replearn.") if not m.name.endswith("__main__")]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('zenml', 'dvc'))\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# Lower layers never import higher ones: data < training < evaluation < export < clustering < stages < cli,
# with the shared pieces (config, similarity, artifacts, embedding, ...) beside data. Where a lower layer
# needs a higher one's code, the stage passes it in (evaluate takes the cluster stage's calibration).
LAYERS = {"training": 1, "evaluation": 2, "export": 3, "clustering": 4, "stages": 5, "cli": 6, "__main__": 6}


def replearn_modules() -> list[str]:
    return ["replearn", *(m.name for m in pkgutil.walk_packages(replearn.__path__, "replearn."))]


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], 0) if len(parts) > 1 else 0


def test_no_module_imports_a_higher_layer() -> None:
    from replearn.stages import imports_of

    upward = {
        (module, imported)
        for module in replearn_modules()
        for imported in imports_of(module)
        if layer(imported) > layer(module)
    }
    assert not upward, sorted(upward)


def test_no_import_circle() -> None:
    from replearn.stages import imported_closure, imports_of

    circles = [
        (module, imported)
        for module in replearn_modules()
        for imported in imports_of(module)
        if imported != module and module in imported_closure(imported)
    ]
    assert not circles, circles
