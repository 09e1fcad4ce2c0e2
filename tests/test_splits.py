"""Splits: deterministic, stable when data is added, group-aware, and never leaving a class without queries."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from replearn.config import ConfigError, SplitConfig, build_config
from replearn.data.splits import assign_splits, read_splits, select_unseen_classes, split_groups
from replearn.errors import UserError


def items(classes: list[str], files: list[str]) -> pd.DataFrame:
    return pd.DataFrame([{"label": c, "source": f"{c}/{f}"} for c in classes for f in files])


def fonts_frame(classes: int, fonts: int, per_font: int) -> pd.DataFrame:
    """Chars-like names: <Font>_<n>.png, the same fonts in every class."""
    files = [f"Font{font:02d}-Bold_{n:05d}.png" for font in range(fonts) for n in range(per_font)]
    return items([f"class_{i:03d}" for i in range(classes)], files)


def keyed(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.set_index("source")[["split", "subset"]]


def test_splits_are_deterministic_and_depend_on_the_seed() -> None:
    frame = items([f"c{i}" for i in range(30)], [f"img{n}.jpg" for n in range(20)])
    first = assign_splits(frame, SplitConfig(group_pattern=None))
    assert first.equals(
        assign_splits(frame.sample(frac=1.0, random_state=1), SplitConfig(group_pattern=None)).loc[first.index]
    )
    other = assign_splits(frame, SplitConfig(group_pattern=None, seed=1))
    assert not first["split"].equals(other["split"])


def test_adding_classes_and_images_never_moves_existing_items() -> None:
    config = SplitConfig(group_pattern=None)
    before = items([f"c{i:02d}" for i in range(12)], [f"img{n:03d}.jpg" for n in range(100)])
    more_images = items([f"c{i:02d}" for i in range(12)], [f"new{n:03d}.jpg" for n in range(40)])
    more_classes = items([f"d{i:02d}" for i in range(6)], [f"img{n:03d}.jpg" for n in range(100)])
    after = pd.concat([more_classes, before, more_images], ignore_index=True)
    old, new = keyed(assign_splits(before, config)), keyed(assign_splits(after, config))
    assert new.loc[old.index].equals(old)
    assert set(new["split"]) == {"train", "val", "test"}


def test_adding_images_to_existing_groups_never_moves_a_group() -> None:
    config = SplitConfig()
    before = fonts_frame(classes=10, fonts=30, per_font=2)
    after = fonts_frame(classes=14, fonts=30, per_font=5)
    old, new = keyed(assign_splits(before, config)), keyed(assign_splits(after, config))
    assert new.loc[old.index].equals(old)


def test_groups_never_straddle_splits_and_every_class_gets_every_split() -> None:
    frame = assign_splits(fonts_frame(classes=62, fonts=30, per_font=4), SplitConfig())
    assert (frame.groupby(["label", "group"])["split"].nunique() == 1).all()
    # The group number ignores the class, so a test font is never seen in training at all.
    assert (frame.groupby("group")["split"].nunique() == 1).all()
    per_class = frame.groupby("label")["split"].apply(set)
    assert all(splits == {"train", "val", "test"} for splits in per_class)
    assert frame["group"].str.startswith("Font").all()


@pytest.mark.parametrize(
    ("groups", "expected"), [(1, {"train"}), (2, {"train", "test"}), (3, {"train", "val", "test"})]
)
def test_small_classes_still_get_queries(groups: int, expected: set[str]) -> None:
    for seed in range(20):
        assigned = split_groups([f"g{n}" for n in range(groups)], SplitConfig(seed=seed))
        assert set(assigned.values()) == expected


def test_without_val_fraction_no_val_is_forced() -> None:
    assigned = split_groups([f"g{n}" for n in range(5)], SplitConfig(val_fraction=0.0))
    assert set(assigned.values()) == {"train", "test"}


def test_items_without_a_group_are_their_own_group() -> None:
    frame = assign_splits(items(["a"], ["IMG0001.jpg", "IMG0002.jpg"]), SplitConfig())
    assert list(frame["group"]) == ["", ""]
    assert set(frame["split"]) == {"train", "test"}


@pytest.mark.parametrize("prefix", ["IMG_", "cat_", "DSC_"])
def test_a_class_with_fewer_than_three_groups_is_split_file_by_file(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The default pattern finds one group, "IMG", in camera names: group by group, all would be train.
    camera_names = [f"{prefix}{n:04d}.jpg" for n in range(40)]
    frame = assign_splits(items([f"c{i}" for i in range(5)], camera_names), SplitConfig())
    assert (frame.groupby("label")["split"].nunique() == 3).all()
    assert "5 classes have files in fewer than 3 groups" in caplog.text


def test_a_class_with_three_groups_keeps_them_whole() -> None:
    frame = assign_splits(items(["a"], [f"{font}_{n}.png" for font in "xyz" for n in range(10)]), SplitConfig())
    assert (frame.groupby("group")["split"].nunique() == 1).all()
    assert set(frame["split"]) == {"train", "val", "test"}


def test_unseen_fraction_is_about_right_and_class_disjoint() -> None:
    classes = [f"class{i}" for i in range(1000)]
    unseen = select_unseen_classes(classes, SplitConfig(unseen_fraction=0.2))
    assert 150 < len(unseen) < 250
    frame = assign_splits(items(classes[:50], ["a_1.png", "b_1.png", "c_1.png"]), SplitConfig())
    assert (frame.groupby("label")["subset"].nunique() == 1).all()
    # Unseen classes are split too, so they have a gallery (train) and queries (test).
    assert set(frame.loc[frame["subset"] == "unseen", "split"]) == {"train", "val", "test"}


def test_unseen_keeps_at_least_one_class_on_each_side() -> None:
    assert len(select_unseen_classes(["a", "b"], SplitConfig(unseen_fraction=0.01))) == 1
    assert len(select_unseen_classes(["a", "b"], SplitConfig(unseen_fraction=0.99))) == 1
    assert select_unseen_classes(["a", "b"], SplitConfig(unseen_fraction=0.0)) == set()


def test_explicit_unseen_classes() -> None:
    config = SplitConfig(unseen_classes=["b", "c"])
    frame = assign_splits(items(["a", "b", "c", "d"], ["x_1.png"]), config)
    assert sorted(frame.loc[frame["subset"] == "unseen", "label"]) == ["b", "c"]
    with pytest.raises(UserError, match="not in the data: zebra"):
        select_unseen_classes(["a", "b"], SplitConfig(unseen_classes=["a", "zebra"]))


def test_bad_group_regex_is_a_user_error() -> None:
    with pytest.raises(UserError, match="not a valid regex"):
        assign_splits(items(["a"], ["x.png"]), SplitConfig(group_pattern="(unclosed"))


def test_fractions_must_leave_room_for_training() -> None:
    with pytest.raises(ConfigError, match="must stay below 1"):
        build_config({"preprocess": {"split": {"val_fraction": 0.5, "test_fraction": 0.5}}})


def test_read_splits_explains_a_missing_table(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="run `replearn preprocess"):
        read_splits(tmp_path)
    (tmp_path / "splits.csv").write_text("path,label\nimages/a/x.png,a\n")
    with pytest.raises(UserError, match="lacks the columns split"):
        read_splits(tmp_path)


def bundled_fonts_frame(per_font: int = 2) -> pd.DataFrame:
    """The file names `replearn data chars` writes (<family>_<font>_<n>.png) for every bundled font."""
    from replearn.data.chars import CHARACTERS, class_name
    from replearn.data.fonts import discover_fonts

    fonts = discover_fonts(CHARACTERS)
    files = [f"{font.family}_{font.name}_{n:05d}.png" for font in fonts for n in range(per_font)]
    return items([class_name(char) for char in CHARACTERS], files)


def test_the_default_split_of_the_bundled_fonts_is_family_disjoint() -> None:
    frame = assign_splits(bundled_fonts_frame(), SplitConfig())
    sides = frame.groupby("group")["split"].unique()
    assert (sides.str.len() == 1).all(), sides[sides.str.len() > 1].to_dict()
    assert {side[0] for side in sides} == {"train", "val", "test"}
    fonts = frame["source"].map(lambda source: Path(source).name.split("_")[1])
    assert frame.groupby(fonts)["split"].nunique().max() == 1


def test_test_groups_leave_exactly_those_groups_out() -> None:
    frame = bundled_fonts_frame()
    split = assign_splits(frame, SplitConfig(test_groups=["HKGrotesk"]))
    assert set(split.loc[split["split"] == "test", "group"]) == {"HKGrotesk"}
    assert set(split.loc[split["group"] == "HKGrotesk", "split"]) == {"test"}
    assert {"train", "val"} <= set(split["split"])
    with pytest.raises(UserError, match="Helvetica.*groups found: ComputerModernRoman"):
        assign_splits(frame, SplitConfig(test_groups=["Helvetica"]))


def test_files_named_after_their_source_get_a_pattern_that_works(caplog: pytest.LogCaptureFixture) -> None:
    # The same five artists drew every class: artist_a.png ... artist_e.png in each folder.
    artists = [f"artist_{name}.png" for name in "abcde"]
    assign_splits(items([f"c{i}" for i in range(4)], artists), SplitConfig())
    assert "group_pattern '^([^_]+)_' puts every matching file in one group, 'artist'" in caplog.text
    assert "'^([^.]+)' would group 'artist_a.png' as 'artist_a'" in caplog.text
    assert "--set preprocess.split.group_pattern='^([^.]+)'" in caplog.text
    caplog.clear()
    frame = assign_splits(items([f"c{i}" for i in range(4)], artists), SplitConfig(group_pattern="^([^.]+)"))
    assert caplog.text == "" and frame.groupby("group")["split"].nunique().eq(1).all()  # an artist stays whole


def test_a_pattern_that_matches_nothing_is_named_with_one_that_would(caplog: pytest.LogCaptureFixture) -> None:
    assign_splits(fonts_frame(classes=4, fonts=5, per_font=2), SplitConfig(group_pattern="^zzz"))
    assert "group_pattern '^zzz' matches none of the 40 file names (e.g. 'Font00-Bold_00000.png')" in caplog.text
    assert "'^([^_]+)_' would group 'Font00-Bold_00000.png' as 'Font00-Bold'" in caplog.text


def test_names_with_no_source_in_them_are_said_to_be_split_one_by_one(caplog: pytest.LogCaptureFixture) -> None:
    # Camera numbers: every file its own name, none shared between class folders.
    labels = ["a"] * 6 + ["b"] * 6
    camera = pd.DataFrame({"label": labels, "source": [f"{label}/IMG_{n:04d}.jpg" for n, label in enumerate(labels)]})
    assign_splits(camera, SplitConfig())
    assert "puts every matching file in one group, 'IMG'" in caplog.text
    assert "no common pattern groups these names by source" in caplog.text


def test_a_useful_pattern_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    assign_splits(fonts_frame(classes=4, fonts=5, per_font=2), SplitConfig())
    assert "group_pattern" not in caplog.text


def test_wide_data_holds_a_quarter_of_the_unseen_classes_whole_in_val(caplog: pytest.LogCaptureFixture) -> None:
    # 1,000 classes drawn by five artists each: val would hold 0.5 images of the median class.
    wide = items([f"c{i:04d}" for i in range(1000)], [f"artist{a}_1.png" for a in range(5)])
    caplog.set_level(logging.INFO, logger="replearn.data.splits")
    frame = assign_splits(wide, SplitConfig())
    without = assign_splits(wide, SplitConfig(calibration_fraction=0.0))
    whole_val = frame.groupby("label")["split"].apply(lambda s: set(s) == {"val"})
    calibration = set(whole_val[whole_val].index)
    unseen = set(frame.loc[frame["subset"] == "unseen", "label"])
    assert calibration <= unseen and 0.18 < len(calibration) / len(unseen) < 0.32
    assert f"{len(calibration)} of the {len(unseen)} unseen classes are held whole in the val split" in caplog.text
    # Every other class is split exactly as without calibration classes, so training data does not move.
    others = ~frame["label"].isin(calibration)
    assert frame.loc[others, "split"].tolist() == without.loc[others, "split"].tolist()
    assert frame["subset"].tolist() == without["subset"].tolist()


def test_seen_classes_of_wide_data_keep_their_groups_in_training() -> None:
    # 1,000 classes, each drawn by 5 of 50 artists.
    wide = pd.DataFrame(
        [
            {"label": f"c{i:04d}", "source": f"c{i:04d}/artist{(7 * i + a) % 50}_1.png"}
            for i in range(1000)
            for a in range(5)
        ]
    )
    frame, forced = assign_splits(wide, SplitConfig()), assign_splits(wide, SplitConfig(wide=False))
    seen = frame["subset"] == "seen"
    # Forced, every seen class of five artists gives val and test one each at least: at most 60% train.
    assert (forced.loc[seen, "split"] == "train").mean() <= 0.6
    assert 0.65 < (frame.loc[seen, "split"] == "train").mean() < 0.8
    assert frame[seen].groupby("label")["split"].apply(lambda s: "train" in set(s)).all()
    # val and test still get about their fractions of the seen images (artist numbers fall where they fall).
    assert (frame.loc[seen, "split"] == "val").mean() > 0.05 and (frame.loc[seen, "split"] == "test").mean() > 0.1
    # Unseen classes outside val keep a gallery and queries each.
    unseen = frame[(frame["subset"] == "unseen")].groupby("label")["split"].apply(set)
    assert all(splits in ({"val"}, {"train", "val", "test"}) for splits in unseen)


def test_data_with_enough_images_a_class_or_few_unseen_classes_keeps_val_as_it_was() -> None:
    chars_like = fonts_frame(classes=62, fonts=8, per_font=5)  # 40 images a class: val holds 4 of each
    narrow = items([f"c{i}" for i in range(199)], [f"artist{a}_1.png" for a in range(5)])  # fewer than 200 classes
    auto_chars = assign_splits(chars_like, SplitConfig())
    for frame in (chars_like, narrow):
        auto, off = assign_splits(frame, SplitConfig()), assign_splits(frame, SplitConfig(calibration_fraction=0.0))
        assert auto["split"].tolist() == off["split"].tolist()
    assert assign_splits(chars_like, SplitConfig(wide=False))["split"].tolist() == auto_chars["split"].tolist()


def test_a_calibration_fraction_set_by_hand_keeps_one_unseen_class_out_of_val() -> None:
    frame = assign_splits(fonts_frame(classes=10, fonts=4, per_font=2), SplitConfig(calibration_fraction=0.99))
    unseen = frame[frame["subset"] == "unseen"]
    per_class = unseen.groupby("label")["split"].apply(set)
    assert sum(splits == {"val"} for splits in per_class) == len(per_class) - 1
