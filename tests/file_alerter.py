"""A ZenML alerter flavor that appends each message to a file: the stand-in for Slack or Discord in tests.

Registered as a custom flavor in the tests' throwaway store (tests/test_pipelines.py), so the clustering
pipeline's failure hook finds it on the active stack exactly as it would find a Slack alerter.
"""

from __future__ import annotations

from zenml.alerter.base_alerter import BaseAlerter, BaseAlerterConfig, BaseAlerterFlavor, BaseAlerterStepParameters

SEPARATOR = "\n----\n"


class FileAlerterConfig(BaseAlerterConfig):
    """path: the file the messages are appended to."""

    path: str


class FileAlerter(BaseAlerter):
    @property
    def config(self) -> FileAlerterConfig:
        assert isinstance(self._config, FileAlerterConfig)
        return self._config

    def post(self, message: str, params: BaseAlerterStepParameters | None = None) -> bool:
        with open(self.config.path, "a", encoding="utf-8") as handle:
            handle.write(message + SEPARATOR)
        return True


class FileAlerterFlavor(BaseAlerterFlavor):
    @property
    def name(self) -> str:
        return "file"

    @property
    def config_class(self) -> type[FileAlerterConfig]:
        return FileAlerterConfig

    @property
    def implementation_class(self) -> type[FileAlerter]:
        return FileAlerter
