"""The stage table: one module and one function shape per stage, and the config keys each one reads."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from replearn.config import Config
from replearn.stages import STAGES, imported_closure, module_file

VOCABULARY = ["validate", "preprocess", "train", "evaluate", "export", "embed", "cluster"]


def test_every_word_of_the_vocabulary_is_a_stage_module() -> None:
    assert list(STAGES) == VOCABULARY
    for name in VOCABULARY:
        assert module_file(STAGES[name].module) == Path("src/replearn/stages") / f"{name}.py"


@pytest.mark.parametrize("name", VOCABULARY)
def test_each_stage_takes_the_config_first_and_where_it_writes_after_its_inputs(name: str) -> None:
    parameters = list(inspect.signature(STAGES[name].function(), eval_str=True).parameters.values())
    assert parameters[0].name == "config" and parameters[0].annotation is Config
    positional = [p.name for p in parameters if p.default is inspect.Parameter.empty]
    assert positional[-1] in ("out_dir", "out_path"), positional


@pytest.mark.parametrize("name", VOCABULARY)
def test_each_stage_reads_only_keys_the_config_has(name: str) -> None:
    dumped = Config().model_dump(by_alias=True)
    for key in STAGES[name].config_keys:
        section, _, leaf = key.partition(".")
        assert section in dumped and (not leaf or leaf in dumped[section]), key


def test_code_files_follow_lazy_imports_inside_functions() -> None:
    """The cluster stage imports its ONNX embedder inside a function; its files must still count."""
    assert "replearn.embedding.onnx" in imported_closure("replearn.stages.cluster")
    assert Path("src/replearn/embedding/onnx.py") in STAGES["cluster"].code_files()
    assert not any("training" in path.parts for path in STAGES["cluster"].code_files())  # torch-free
