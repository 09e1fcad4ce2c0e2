#!/usr/bin/env bash
# The training-recipe search as DVC experiments: one queued `dvc exp run` per lever, run one at a time,
# then one table of every experiment's parameters and metrics (`dvc exp show`).
#
#   bash benchmarks/recipe_search.sh          # queue the levers below, run them, show the table
#   bash benchmarks/recipe_search.sh --show   # only the table
#
# Every experiment runs the whole dvc.yaml pipeline on the committed data and params.yaml plus its -S
# overrides, so its evaluate numbers come from the same split as the default's: the test fonts are of
# typeface families that training never sees (preprocess.split.group_pattern, README: Training).
# On your own data: edit the levers, commit, run; `dvc exp apply NAME` takes the winner into params.yaml.
# Each lever costs one training run (about 11 minutes each at the defaults on a 2-core CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" ZENML_ANALYTICS_OPT_IN=false

show() {
    dvc exp show --no-pager --md --only-changed \
        --keep 'seen/precision_at_1|unseen/precision_at_1|seen/loo/precision_at_1|unseen/loo/precision_at_1|groups/test_in_train' \
        --drop 'threshold.*|.*/(recall|r_precision|map|knn|nmi|ami|pair|queries|lone|gallery|classes).*|.*precision_drop'
}

if [[ "${1:-}" == "--show" ]]; then
    show
    exit 0
fi

style='[random_resized_crop,rotation,color_jitter,blur,stroke,shear,perspective]'
queue() { dvc exp run --queue --name "$1" "${@:2}"; }
queue base-augment
queue stroke -S '++train.augmentations=[random_resized_crop,rotation,color_jitter,blur,stroke]'
queue style -S "++train.augmentations=$style"
queue style-elastic-noise -S '++train.augmentations=[random_resized_crop,rotation,color_jitter,blur,stroke,shear,perspective,elastic,noise]'
dvc exp run --run-all --jobs 1
show
