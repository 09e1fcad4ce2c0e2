"""The stages of replearn, one module each, and the table the three ways of running them read.

`replearn/stages/<name>.py` holds one function, `stage(config, <inputs>, out_dir) -> <Result>`: the
whole Config first, then the stage's input paths, then where it writes. The CLI commands, the
ZenML steps and (through the CLI) the DVC stages all call it.

`STAGES[name]` says what a stage depends on, so that nobody keeps those lists by hand:

- `reads`: the config sections (`train`) or single keys (`cluster.seed`) its results depend on;
  tests/test_dvc.py checks that dvc.yaml declares them (or their sections) as params, and nothing else.
- `runtime`: keys that say how the stage runs, not what it computes (devices, onnxruntime threads).
  A ZenML step gets `reads` and `runtime` (`config_keys`); DVC need not rerun on them, and a
  params.yaml may leave their sections out.
- `code_files()`: the source files of every replearn module the stage module imports, directly or
  not, lazily or not. ZenML keys its cache on them and tests/test_dvc.py checks dvc.yaml's deps
  cover them, so an edit reruns exactly the stages it can change.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

IMPORT_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the replearn package: src/ in a checkout


@dataclass(frozen=True)
class Stage:
    """One stage: its name (and module, stages/<name>.py) and the config keys it reads."""

    name: str
    reads: tuple[str, ...]
    runtime: tuple[str, ...] = ()

    @property
    def config_keys(self) -> tuple[str, ...]:
        """Everything the stage reads from the config: what its ZenML step is given."""
        return self.reads + self.runtime

    @property
    def module(self) -> str:
        return f"replearn.stages.{self.name}"

    def function(self) -> Callable[..., Any]:
        """The stage function (imported on demand: a stage may pull in torch)."""
        stage: Callable[..., Any] = importlib.import_module(self.module).stage
        return stage

    def code_files(self) -> list[Path]:
        """Source files of the stage module and of everything in replearn it imports, sorted.

        >>> {"src/replearn/stages/validate.py", "src/replearn/data/validation.py"} <= {
        ...     path.as_posix() for path in STAGES["validate"].code_files()
        ... }
        True
        """
        return sorted({module_file(name) for name in imported_closure(self.module)}, key=lambda path: path.as_posix())


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage("validate", ("validate", "train.images_per_class")),
        Stage("preprocess", ("preprocess",)),
        # preprocess.resize comes from the preprocessed folder's preprocess.json, not from the config.
        Stage("train", ("train",)),
        Stage(
            "evaluate",
            ("evaluate", "cluster.neighbors", "cluster.min_size", "cluster.seed"),
            ("embed", "train.devices"),
        ),
        Stage("export", ("export",)),
        Stage("embed", ("embed",)),
        Stage("cluster", ("cluster",), ("embed",)),
    )
}


def module_file(module: str) -> Path:
    """The file of a dotted module name, relative to the folder above the import root (src/replearn/... in a checkout).

    >>> module_file("replearn.stages").as_posix()
    'src/replearn/stages/__init__.py'
    """
    base = IMPORT_ROOT / Path(*module.split("."))
    path = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
    return path.relative_to(IMPORT_ROOT.parent)


def is_module(name: str) -> bool:
    """Whether a dotted name is a replearn module (rather than a class or constant imported from one)."""
    base = IMPORT_ROOT / Path(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


@cache
def imports_of(module: str) -> frozenset[str]:
    """The replearn modules `module` imports anywhere in its code (lazy imports inside functions too)."""
    source = IMPORT_ROOT.parent / module_file(module)
    found: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("replearn"):
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("replearn")}
    return frozenset(name for name in found if is_module(name))


def imported_closure(module: str) -> set[str]:
    """`module` and every replearn module it imports, directly or through others."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(imports_of(name))
    return seen
