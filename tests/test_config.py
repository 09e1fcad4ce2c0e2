from pathlib import Path

import pytest

from replearn.config import Config, ConfigError, load_config


def test_defaults_load_without_a_file() -> None:
    config = load_config(None)
    assert config.train.model.backbone.name == "resnet18"
    assert config.validate_.on_error == "fail"


def test_params_yaml_is_valid_and_differs_only_where_meant(repo_root: Path) -> None:
    config = load_config(repo_root / "params.yaml")
    assert isinstance(config, Config)
    assert config.train.iterations is None  # the schedule follows the data (training/iteration_plan.py)


def test_unknown_key_names_the_key_and_the_closest_valid_one(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  iteratons: 10\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "train.iteratons" in message
    assert "did you mean 'iterations'" in message


def test_unknown_section_is_rejected_with_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("evalute:\n  knn_k: 3\n")
    with pytest.raises(ConfigError, match="did you mean 'evaluate'"):
        load_config(path)


def test_nested_unknown_key(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  model:\n    backbone:\n      wieghts: imagenet\n")
    with pytest.raises(ConfigError, match=r"train\.model\.backbone\.wieghts.*did you mean 'weights'"):
        load_config(path)


def test_overrides_are_parsed_as_yaml_and_validated() -> None:
    config = load_config(None, ["train.lr=0.01", "train.augmentations=[rotation]", "cluster.threshold=0.7"])
    assert config.train.lr == 0.01
    assert config.train.augmentations == ["rotation"]
    assert config.cluster.threshold == 0.7
    with pytest.raises(ConfigError, match="train.iterations"):
        load_config(None, ["train.iterations=-3"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["train.lr"])


def test_wrong_type_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("preprocess:\n  resize:\n    mode: squash\n")
    with pytest.raises(ConfigError, match="preprocess.resize.mode"):
        load_config(path)


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)
