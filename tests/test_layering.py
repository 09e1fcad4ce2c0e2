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
