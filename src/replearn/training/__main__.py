"""`python -m replearn.training ...` is `replearn train ...`: the entry point for torchrun on clusters.

    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
        -m replearn.training --config params.yaml data/preprocessed outputs/train

Global options (--config, --set, --verbose) come first, as with `replearn`; the rest are the
train command's arguments. Every process reads RANK/WORLD_SIZE/LOCAL_RANK from the environment.
"""

from __future__ import annotations

import sys

from replearn.cli import run

_GLOBAL_WITH_VALUE = {"--config", "-c", "--set", "-s"}
_GLOBAL_FLAGS = {"--verbose", "-v"}


def train_arguments(argv: list[str]) -> list[str]:
    """The `replearn` command line for these arguments: "train" inserted after the global options.

    >>> train_arguments(["--set", "train.iterations=5", "-v", "data/pre", "out", "--resume"])
    ['--set', 'train.iterations=5', '-v', 'train', 'data/pre', 'out', '--resume']
    """
    position = 0
    while position < len(argv):
        option = argv[position].split("=", 1)[0]
        if option in _GLOBAL_WITH_VALUE and "=" not in argv[position]:
            position += 2
        elif option in _GLOBAL_WITH_VALUE or option in _GLOBAL_FLAGS:
            position += 1
        else:
            break
    return [*argv[:position], "train", *argv[position:]]


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *train_arguments(sys.argv[1:])]
    run()
