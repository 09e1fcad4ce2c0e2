"""Deterministic, stable splits: held-out "unseen" classes, then group-aware train/val/test inside every class.

Every decision is a threshold on a number drawn from the sha256 of a name and the seed, never a
rank or a position in a sorted list. So adding classes or images never moves an existing item:
its number, and therefore its side of the threshold, does not depend on what else is there.

Three exceptions keep small datasets usable:

- When no class's number falls below unseen_fraction, the nearest class is made unseen anyway
  (and one is kept seen when all fall below). It returns to its own side, and into training,
  once added classes fill the unseen side on their own.
- A class with three or more groups gets at least one train, one val and one test group (the
  evaluation needs queries and a gallery in every class): when the thresholds leave a split
  empty, the group whose number lies nearest to that split's interval moves into it, and may
  move back once new groups fill the split on their own.
- A class whose files fall into fewer than three groups (camera names such as IMG_0001.jpg, where
  the pattern finds one group) is split file by file, with a warning; with three groups it is
  split by group again.

On wide data (thousands of classes of 3 to 7 images: products, icons, drawings; `wide`, detected
when MIN_WIDE_CLASSES classes or more have a median class that cannot give val MIN_VAL_IMAGES
images) two rules change:

- A seen class is not forced to give val and test a group each: with three groups that took two
  of them out of training, half the images of the wide benchmark. Its groups fall where their
  numbers put them, train excepted, and val and test still get about their fractions overall.
- The val split would hold 1 or 2 images of a class, so evaluate would calibrate the cluster stage
  on images that never form a cluster: on the wide benchmark that left 41% of an inbox of new
  classes unclustered. So a share of the unseen classes (calibration_fraction, by default
  AUTO_CALIBRATION_FRACTION when enough classes are unseen) is held whole in val: classes that
  training never sees, at the size an inbox holds them, among the thin val images of the others.
  Which classes: again a threshold on each class's own number.

Whether data is wide is a property of the whole data, so adding images can change it; preprocess
logs it when it applies.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from replearn.config import SplitConfig
from replearn.errors import UserError

SPLITS_FILE = "splits.csv"
COLUMNS = ["path", "label", "split", "subset", "group", "source", "sha256"]
SPLITS = ("train", "val", "test")
SUBSETS = ("seen", "unseen")
MIN_GROUPS = len(SPLITS)

log = logging.getLogger(__name__)


def stable_unit(*parts: object) -> float:
    """A number in [0, 1) from the parts: the same on every machine and Python run, unlike hash().

    >>> stable_unit(0, "unseen", "cat") == stable_unit(0, "unseen", "cat")
    True
    >>> 0.0 <= stable_unit("anything") < 1.0
    True
    """
    digest = hashlib.sha256("\x1f".join(str(part) for part in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def group_of(file_name: str, pattern: re.Pattern[str] | None) -> str:
    """The group key of a file: the regex's first group (or whole match), "" when there is no match.

    >>> group_of("DejaVuSans-Bold_00003.png", re.compile(r"^([^_]+)_"))
    'DejaVuSans-Bold'
    >>> group_of("IMG_0001.jpg", None)
    ''
    """
    if pattern is None:
        return ""
    match = pattern.search(file_name)
    if match is None:
        return ""
    return match.group(1) if match.groups() else match.group(0)


# Patterns tried on the user's own file names when the configured one finds no useful groups: the
# source before an underscore or a hyphen (chars: DejaVuSans_00001.png), or the whole stem, for files
# named after their source (artist_a.png, artist_b.png in every class folder).
CANDIDATE_PATTERNS = (r"^([^_]+)_", r"^([^-]+)-", r"^([^.]+)")


def useful_groups(names: pd.Series, labels: pd.Series, pattern: re.Pattern[str]) -> bool:
    """Whether `pattern` groups files as a source would: most classes get MIN_GROUPS groups, and groups
    recur across classes (one artist, font or camera in many class folders), not one group per file.

    >>> names = pd.Series(["artist_a.png", "artist_b.png", "artist_c.png"] * 2)
    >>> labels = pd.Series(["cat"] * 3 + ["dog"] * 3)
    >>> useful_groups(names, labels, re.compile(r"^([^.]+)")), useful_groups(names, labels, re.compile(r"^([^_]+)_"))
    (True, False)
    """
    groups = pd.Series([group_of(name, pattern) for name in names], index=names.index)
    grouped = groups != ""
    if not grouped.any():
        return False
    per_class = groups[grouped].groupby(labels[grouped]).nunique()
    classes_per_group = labels[grouped].groupby(groups[grouped]).nunique()
    return bool((per_class >= MIN_GROUPS).mean() >= 0.5 and (classes_per_group > 1).mean() >= 0.5)


def diagnose_groups(frame: pd.DataFrame, config: SplitConfig) -> str | None:
    """What is wrong with the configured group pattern on these files, with a pattern that would work; None if fine.

    A pattern that matches no file name, or puts every file in one group, protects nothing: near-duplicates
    of one source (a font, an artist, a camera session) can land in train and test alike.
    """
    groups = frame["group"]
    distinct = set(groups) - {""}
    if len(distinct) > 1:
        return None
    names = frame["source"].map(lambda source: Path(source).name)
    found = (
        f"matches none of the {len(frame):,} file names"
        if not distinct
        else f"puts every matching file in one group, {next(iter(distinct))!r}"
    )
    message = f"preprocess.split.group_pattern {config.group_pattern!r} {found} (e.g. {names.iloc[0]!r})"
    for candidate in CANDIDATE_PATTERNS:
        if candidate != config.group_pattern and useful_groups(names, frame["label"], re.compile(candidate)):
            example = names.iloc[0]
            group = group_of(example, re.compile(candidate))
            return (
                f"{message}; on these names {candidate!r} would group {example!r} as {group!r}: "
                f"--set preprocess.split.group_pattern='{candidate}' (docs/data.md)"
            )
    return f"{message}; no common pattern groups these names by source, so files are split one by one (docs/data.md)"


def compile_group_pattern(config: SplitConfig) -> re.Pattern[str] | None:
    """The configured group regex, compiled; a bad regex is the user's error, named as such."""
    if not config.group_pattern:
        return None
    try:
        return re.compile(config.group_pattern)
    except re.error as error:
        raise UserError(
            f"preprocess.split.group_pattern {config.group_pattern!r} is not a valid regex: {error}"
        ) from None


def _distance(value: float, low: float, high: float) -> float:
    return max(low - value, value - high, 0.0)


def select_unseen_classes(classes: Iterable[str], config: SplitConfig) -> set[str]:
    """Held-out classes: the configured list, or every class whose number falls below unseen_fraction.

    With a fraction above zero and at least two classes, at least one class is unseen and at
    least one is seen (the class nearest the threshold switches sides).
    """
    names = sorted(set(classes))
    if config.unseen_classes:
        missing = sorted(set(config.unseen_classes) - set(names))
        if missing:
            raise UserError(
                f"preprocess.split.unseen_classes names classes that are not in the data: {', '.join(missing)}"
            )
        return set(config.unseen_classes)
    if config.unseen_fraction <= 0 or len(names) < 2:
        return set()
    unit = {name: stable_unit(config.seed, "unseen", name) for name in names}
    unseen = {name for name in names if unit[name] < config.unseen_fraction}
    if not unseen:
        unseen = {min(names, key=lambda name: unit[name])}
    elif len(unseen) == len(names):
        unseen.discard(max(names, key=lambda name: unit[name]))
    return unseen


# Wide data: the median class gives val fewer images than a cluster needs (cluster.min_size, 3 by default).
MIN_VAL_IMAGES = 3
MIN_WIDE_CLASSES = 200  # a few small classes are a small dataset, split as usual; 200 give 40 unseen, 10 to calibrate
AUTO_CALIBRATION_FRACTION = 0.25
MIN_CALIBRATION_CLASSES = 10  # fewer would give the calibration too few classes to tell merges from splits


def is_wide(labels: pd.Series, config: SplitConfig) -> bool:
    """config.wide, or when null: whether MIN_WIDE_CLASSES classes or more have a median class too small to give
    val MIN_VAL_IMAGES images.

    Never with test_groups, where the user has said exactly how to split.

    >>> wide = pd.Series([f"c{n // 5}" for n in range(5000)])
    >>> is_wide(wide, SplitConfig()), is_wide(pd.Series(["c"] * 120 + ["d"] * 120), SplitConfig())
    (True, False)
    """
    if config.wide is not None:
        return config.wide
    sizes = labels.value_counts()
    small = 0 < float(sizes.median() if len(sizes) else 0) * config.val_fraction < MIN_VAL_IMAGES
    return small and len(sizes) >= MIN_WIDE_CLASSES and not config.test_groups


def calibration_fraction(wide: bool, unseen: int, config: SplitConfig) -> float:
    """config.calibration_fraction, or when null: AUTO_CALIBRATION_FRACTION on wide data with enough unseen classes.

    >>> calibration_fraction(True, 200, SplitConfig()), calibration_fraction(True, 20, SplitConfig())
    (0.25, 0.0)
    >>> calibration_fraction(False, 200, SplitConfig(calibration_fraction=0.5))
    0.5
    """
    if config.calibration_fraction is not None:
        return config.calibration_fraction
    return AUTO_CALIBRATION_FRACTION if wide and unseen * AUTO_CALIBRATION_FRACTION >= MIN_CALIBRATION_CLASSES else 0.0


def select_calibration_classes(unseen: set[str], fraction: float, config: SplitConfig) -> set[str]:
    """Unseen classes held whole in val, each by its own number; at least one unseen class stays out of val."""
    if fraction <= 0 or len(unseen) < 2:
        return set()
    unit = {name: stable_unit(config.seed, "calibration", name) for name in sorted(unseen)}
    chosen = {name for name, number in unit.items() if number < fraction}
    if len(chosen) == len(unseen):
        chosen.discard(max(unit, key=lambda name: unit[name]))
    return chosen


def split_groups(
    keys: Iterable[str], config: SplitConfig, test_keys: frozenset[str] = frozenset(), fill_every_split: bool = True
) -> dict[str, str]:
    """train/val/test for the groups of one class, by threshold on each group's number.

    test is [0, test_fraction), val the next val_fraction, train the rest; then the small-class
    guarantee (see the module docstring) fills train, test and val, in that order of priority,
    as far as the number of groups allows; without `fill_every_split` (a seen class of wide data),
    train alone. With `test_keys` (preprocess.split.test_groups), those keys are the test split and
    no other key is: test_fraction is then 0 for the rest.
    """
    unit = {key: stable_unit(config.seed, "split", key) for key in sorted(set(keys))}
    test_fraction = 0.0 if test_keys else config.test_fraction
    intervals = {
        "test": (0.0, test_fraction),
        "val": (test_fraction, test_fraction + config.val_fraction),
        "train": (test_fraction + config.val_fraction, 1.0),
    }
    assigned = {key: next(s for s in ("test", "val", "train") if u < intervals[s][1]) for key, u in unit.items()}
    assigned |= {key: "test" for key in unit if key in test_keys}
    wanted = ["train"] + [s for s in ("test", "val") if fill_every_split and intervals[s][1] > intervals[s][0]]
    required = wanted[: len(unit) - sum(1 for key in unit if key in test_keys)]
    for split in required:
        if split in assigned.values():
            continue
        sizes = {s: sum(1 for v in assigned.values() if v == s) for s in SPLITS}
        donors = [key for key, s in assigned.items() if key not in test_keys and (s not in required or sizes[s] > 1)]
        nearest = min(donors, key=lambda key: (_distance(unit[key], *intervals[split]), key))
        assigned[nearest] = split
    return assigned


def assign_splits(items: pd.DataFrame, config: SplitConfig) -> pd.DataFrame:
    """Add group, subset and split columns to a frame with `label` and `source` (label/file name).

    Items whose file name matches group_pattern are split by group, so a group (a font, a
    camera session) never straddles train and test; the group number depends on the group
    name alone, so the same font lands on the same side in every class. Other items are
    their own group, and so is every item of a class with fewer than three groups.
    """
    pattern = compile_group_pattern(config)
    frame = items.copy()
    frame["group"] = [group_of(Path(source).name, pattern) for source in frame["source"]]
    frame["_key"] = [
        f"group:{group}" if group else f"item:{source}"
        for group, source in zip(frame["group"], frame["source"], strict=True)
    ]
    diagnosis = diagnose_groups(frame, config)
    if diagnosis:
        log.warning(diagnosis)
    missing = sorted(set(config.test_groups) - set(frame["group"]))
    if missing:
        known = ", ".join(sorted(set(frame["group"]) - {""})[:10]) or "none"
        raise UserError(
            f"preprocess.split.test_groups names groups that are not in the data: {', '.join(missing)} "
            f"(groups found: {known})"
        )
    test_keys = frozenset(f"group:{group}" for group in config.test_groups)
    unseen = select_unseen_classes(frame["label"], config)
    frame["subset"] = ["unseen" if label in unseen else "seen" for label in frame["label"]]
    wide = is_wide(frame["label"], config)
    calibration = select_calibration_classes(unseen, calibration_fraction(wide, len(unseen), config), config)
    if wide:
        log.info(
            "wide data (the median class has %.0f images: val would hold fewer than %d of it): seen classes are not "
            "forced to give val and test a group each, and %d of the %d unseen classes are held whole in the val "
            "split, where evaluate calibrates the cluster stage (preprocess.split.wide, calibration_fraction)",
            frame["label"].value_counts().median(),
            MIN_VAL_IMAGES,
            len(calibration),
            len(unseen),
        )
    splits = pd.Series("", index=frame.index, dtype=object)
    ungrouped = []
    for label, members in frame.groupby("label", sort=True):
        if label in calibration:
            splits[members.index] = "val"
            continue
        keys = members["_key"]
        if keys.nunique() < MIN_GROUPS <= len(members):
            ungrouped.append(str(label))
            keys = "item:" + members["source"]
        assigned = split_groups(keys, config, test_keys, fill_every_split=not wide or label in unseen)
        splits[members.index] = [assigned[key] for key in keys]
    if ungrouped:
        log.warning(
            "%d classes have files in fewer than %d groups of preprocess.split.group_pattern %r and are "
            "split file by file, so near-duplicates may straddle train and test: %s",
            len(ungrouped),
            MIN_GROUPS,
            config.group_pattern,
            ", ".join(ungrouped[:5]) + (", ..." if len(ungrouped) > 5 else ""),
        )
    frame["split"] = splits
    return frame.drop(columns="_key")


def read_splits(preprocessed_dir: Path | str) -> pd.DataFrame:
    """The split table of a preprocessed folder, every column as text, `path` relative to that folder."""
    path = Path(preprocessed_dir) / SPLITS_FILE
    if not path.is_file():
        raise UserError(f"{path} does not exist; run `replearn preprocess DATA_DIR {preprocessed_dir}` first")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [column for column in COLUMNS if column not in frame.columns]
    if missing:
        raise UserError(f"{path} lacks the columns {', '.join(missing)}; rerun `replearn preprocess`")
    return frame
