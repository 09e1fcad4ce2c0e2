"""Each step gets only the config sections it reads, so a change to one stage's values reruns that
stage and what follows it, never what comes before (the sections are part of ZenML's cache key)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from zenml.config import CachePolicy

from replearn.config import Config
from replearn.stages import STAGES


def sections(config: Config, *names: str) -> dict[str, Any]:
    """The named sections of `config` as JSON-ready dicts; `train.P`-style names pick one key of a section."""
    dumped = config.model_dump(mode="json", by_alias=True)
    picked: dict[str, Any] = {}
    for name in names:
        section, _, key = name.partition(".")
        if key:
            picked.setdefault(section, {})[key] = dumped[section][key]
        else:
            picked[section] = dumped[section]
    return picked


def rebuild(values: dict[str, Any]) -> Config:
    """A full Config from some sections; the rest take their defaults and are not read by the step."""
    return Config.model_validate(values)


def digest(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts, for naming content-addressed output folders."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_dir(outputs_dir: str, stage: str, *parts: Any) -> Path:
    """outputs/zenml/<stage>/<digest>: different inputs never share (and overwrite) one folder."""
    return Path(outputs_dir) / "zenml" / stage / digest(*parts)


def library_cache_policy(stage: str) -> CachePolicy:
    """Also key the cache on the library files the stage runs (ZenML hashes only the step's own code).

    The files are the stage module and everything in replearn it imports (`STAGES[stage].code_files()`),
    which tests/test_dvc.py checks dvc.yaml's deps against, so both orchestrators rerun a stage on the
    same edits. File dependencies, not source dependencies: ZenML hashes files without importing
    them, so a fully cached run never pays for importing torch.
    """
    return CachePolicy(file_dependencies=[path.as_posix() for path in STAGES[stage].code_files()])
