"""How many iterations to train when train.iterations is left unset: the data's size, within a time budget.

A fixed count fits one dataset. 600 iterations of 32 classes draw each of the chars data's 50
training classes about 380 times, but each of 1,500 classes only 13 times, and on such data more
iterations kept paying (issue 33). So by default every training class is drawn into
`class_draws` batches on average, never fewer than `min_iterations` (what small datasets such as the
chars data train for), and never more than the budget allows: `budget_minutes` at
`seconds_per_iteration`, the cost of one iteration on the machine the budget is planned for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from replearn.config import TrainConfig


@dataclass(frozen=True)
class IterationPlan:
    """The iterations to train and the sentence that says why, for the log and train_summary.json."""

    iterations: int
    rule: str  # "fixed", "min_iterations", "class_draws" or "budget"
    reason: str


def plan_iterations(config: TrainConfig, classes: int, world_size: int = 1) -> IterationPlan:
    """The iterations for `classes` training classes: train.iterations when set, else the data's rule.

    With P classes a batch on each of `world_size` ranks, n iterations draw a class n * P * ranks /
    classes times on average, so `class_draws` draws take classes * class_draws / (P * ranks)
    iterations, bounded below by min_iterations and above by the budget.

    >>> plan_iterations(TrainConfig(), classes=50).iterations  # the chars data: the floor
    600
    >>> plan_iterations(TrainConfig(), classes=1600).iterations  # 1,600 classes x 24 draws / 32 a batch
    1200
    >>> plan_iterations(TrainConfig(budget_minutes=10), classes=1600).iterations  # 10 min / 0.8 s
    750
    >>> plan_iterations(TrainConfig(iterations=300), classes=1600).rule
    'fixed'
    """
    if config.iterations is not None:
        return IterationPlan(config.iterations, "fixed", f"train.iterations is set to {config.iterations}")
    per_batch = min(config.classes_per_batch, classes) * world_size
    wanted = math.ceil(classes * config.class_draws / per_batch)
    budget = max(1, math.floor(config.budget_minutes * 60 / config.seconds_per_iteration))
    drawn = (
        f"{classes:,} training classes x train.class_draws={config.class_draws} / {per_batch} classes a batch "
        f"= {wanted:,} iterations"
    )
    if max(wanted, config.min_iterations) > budget:
        return IterationPlan(
            budget,
            "budget",
            f"{drawn}, capped at {budget:,} by train.budget_minutes={config.budget_minutes:g} at "
            f"train.seconds_per_iteration={config.seconds_per_iteration:g}",
        )
    if wanted < config.min_iterations:
        return IterationPlan(
            config.min_iterations, "min_iterations", f"{drawn}, raised to train.min_iterations={config.min_iterations}"
        )
    minutes = wanted * config.seconds_per_iteration / 60
    return IterationPlan(wanted, "class_draws", f"{drawn} (about {minutes:.0f} min, within the budget)")
