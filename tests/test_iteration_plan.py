"""The default schedule follows the data: 62 classes keep 600 iterations, many classes get more, the budget caps."""

import pytest

from replearn.config import TrainConfig
from replearn.training.iteration_plan import plan_iterations


def test_the_chars_data_keeps_todays_600_iterations() -> None:
    # 62 classes, 50 of them seen: 50 x 24 / 32 = 38 iterations, raised to the floor.
    plan = plan_iterations(TrainConfig(), classes=50)
    assert (plan.iterations, plan.rule) == (600, "min_iterations")
    assert "train.min_iterations=600" in plan.reason


def test_many_classes_get_more_iterations_in_proportion() -> None:
    plan = plan_iterations(TrainConfig(), classes=1_453)
    assert (plan.iterations, plan.rule) == (1_090, "class_draws")  # ceil(1,453 x 24 / 32)
    assert "1,453 training classes" in plan.reason
    assert plan_iterations(TrainConfig(), classes=1_000).iterations == 750


def test_the_budget_caps_the_iterations_and_says_so() -> None:
    plan = plan_iterations(TrainConfig(budget_minutes=10, seconds_per_iteration=1.0), classes=5_000)
    assert (plan.iterations, plan.rule) == (600, "budget")
    assert "train.budget_minutes=10" in plan.reason
    # The budget bounds the floor too: 2 minutes at 1 s buy 120 iterations.
    assert plan_iterations(TrainConfig(budget_minutes=2, seconds_per_iteration=1.0), classes=10).iterations == 120


def test_ranks_share_the_draws_and_a_set_count_wins() -> None:
    assert plan_iterations(TrainConfig(), classes=3_200, world_size=2).iterations == 1_200
    assert plan_iterations(TrainConfig(iterations=50), classes=3_200).rule == "fixed"
    # Fewer classes than P: every batch holds them all.
    assert plan_iterations(TrainConfig(min_iterations=1, class_draws=100), classes=4).iterations == 100


@pytest.mark.parametrize("key", ["class_draws", "min_iterations", "budget_minutes", "seconds_per_iteration"])
def test_schedule_settings_must_be_positive(key: str) -> None:
    with pytest.raises(ValueError):
        TrainConfig(**{key: 0})
