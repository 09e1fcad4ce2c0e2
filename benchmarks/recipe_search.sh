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
# Each lever costs one training run: 14.5 to 19.5 minutes each on the 2-core development CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" ZENML_ANALYTICS_OPT_IN=false

show() {  # P@1 (test vs train gallery, and leave-one-out), the family check, and the levers
    dvc exp show --no-pager --md --drop '.*' \
        --keep '^Experiment$|^(seen|unseen)/(loo/)?precision_at_1$|^groups/test_in_train$|^train\.(augmentations|iterations)$'
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
queue iterations-1500 -S train.iterations=1500
dvc queue start --jobs 1  # (dvc exp run --run-all, version 3, can hang after its last task here)
while dvc queue status | grep -qE 'Queued|Running'; do sleep 30; done
show
