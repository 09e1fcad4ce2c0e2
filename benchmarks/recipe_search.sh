#!/usr/bin/env bash
# The training-recipe search as DVC experiments: one queued `dvc exp run` per lever, run one at a time,
# then one table of every experiment's parameters and metrics (`dvc exp show`).
#
#   bash benchmarks/recipe_search.sh          # queue the levers below, run them, show the table
#   bash benchmarks/recipe_search.sh --show   # only the table
#
# Every experiment runs the whole dvc.yaml pipeline on the committed data and params.yaml plus its -S
# overrides, so its evaluate numbers come from the same split as the default's: the test fonts are of
# typeface families that training never sees (preprocess.split.group_pattern, docs/train.md).
# On your own data: edit the levers, commit, run; `dvc exp apply NAME` takes the winner into params.yaml.
# Each lever costs one pipeline run: about 11 minutes (8 of them training) on the 2-core development CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" ZENML_ANALYTICS_OPT_IN=false

show() {  # P@1 (test vs train gallery, and leave-one-out), the family check, and the levers
    dvc exp show --no-pager --md --drop '.*' \
        --keep '^Experiment$|^(seen|unseen)/(loo/)?precision_at_1$|^groups/test_in_train$|^train\.(classes_per_batch|iterations|loss\.margin)$'
}

if [[ "${1:-}" == "--show" ]]; then
    show
    exit 0
fi

# The defaults against the recipe before them, and against their 32 classes a batch without the wider margin.
queue() { dvc exp run --queue --name "$1" "${@:2}"; }
queue before -S train.classes_per_batch=16 -S train.iterations=1000 -S train.loss.margin=0.25
queue margin-0.25 -S train.loss.margin=0.25
dvc queue start --jobs 1  # (dvc exp run --run-all, version 3, can hang after its last task here)
# grep reads all of it: with -q and pipefail, dvc's SIGPIPE would end the wait at once
while dvc queue status | grep -E 'Queued|Running' >/dev/null; do sleep 30; done
show
