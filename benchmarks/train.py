"""Training speed: the vectorized Circle loss against per-anchor and library baselines; images/s at defaults.

1. One loss step (forward + backward on L2-normalised 128-d embeddings, P x 4 labels) at batch 32, 128
   and 512 for: replearn's `circle_loss` (one N x N matrix, masked logsumexps), the same loss written
   anchor by anchor in Python (the baseline the issue asks for), and pytorch-metric-learning's
   CircleLoss (boolean-indexed pair lists). Prints each one's time and its ratio to the vectorized loss.
   Runs on one thread: these ops are tiny, and on a shared 2-core machine two OpenMP threads mostly
   measure each other's waiting.
2. Training images/s at the default config (resnet18 + transformer, 64 px, P=16 x K=4): the model's
   forward + backward + SGD step, in fp32 and in bf16 autocast, and the augmentation path (decode from
   memory + torchvision v2 per image) that DataLoader workers run beside it.

    python benchmarks/train.py            # about two minutes on 2 cores
    python benchmarks/train.py --quick    # fewer repetitions
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import CircleLoss as PmlCircleLoss

from replearn.config import Config
from replearn.training.augment import build_augmentation
from replearn.training.loop import build_optimizer, resolve_precision
from replearn.training.loss import circle_loss, circle_loss_per_anchor
from replearn.training.model import build_model


def seconds_per_call(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median wall time of `fn` over `repeats` calls, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def bench_loss(repeats: int) -> None:
    config = Config().train.loss
    pml = PmlCircleLoss(m=config.margin, gamma=config.gamma)
    losses: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "vectorized": lambda e, y: circle_loss(F.normalize(e, dim=1), y, config.margin, config.gamma),
        "per-anchor loop": lambda e, y: circle_loss_per_anchor(F.normalize(e, dim=1), y, config.margin, config.gamma),
        "pytorch-metric-learning": lambda e, y: pml(e, y),
    }
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    print("\n## loss step (forward + backward), 128-d embeddings, K=4 images per class, one thread")
    print(f"{'batch':>6} {'loss':>26} {'ms':>10} {'x vectorized':>13}")
    for batch in (32, 128, 512):
        torch.manual_seed(0)
        raw = torch.randn(batch, 128, requires_grad=True)
        labels = torch.arange(batch // 4).repeat_interleave(4)
        baseline = 0.0
        for name, fn in losses.items():

            def step(
                fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = fn,
                raw: torch.Tensor = raw,
                labels: torch.Tensor = labels,
            ) -> None:
                raw.grad = None
                fn(raw, labels).backward()

            runs = max(3, repeats // (10 if name == "per-anchor loop" and batch >= 512 else 1))
            seconds = seconds_per_call(step, runs)
            baseline = baseline or seconds
            print(f"{batch:>6} {name:>26} {seconds * 1e3:>10.3f} {seconds / baseline:>12.1f}x")
    torch.set_num_threads(previous)


def bench_training(repeats: int) -> None:
    config = Config()
    cfg, size = config.train, config.preprocess.resize.size
    batch = cfg.classes_per_batch * cfg.images_per_class
    torch.manual_seed(0)
    model = build_model(cfg.model)
    optimizer = build_optimizer(model, cfg)
    images = torch.rand(batch, 3, size, size)
    labels = torch.arange(cfg.classes_per_batch).repeat_interleave(cfg.images_per_class)
    print(f"\n## training step at the default config: {cfg.model.backbone.name}, {size} px, batch {batch}")
    print(f"threads: {torch.get_num_threads()}")
    rates = {}
    for precision in ("fp32", "bf16"):

        def step(precision: str = precision) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                embeddings = model(images)
            loss = circle_loss(embeddings.float(), labels, cfg.loss.margin, cfg.loss.gamma)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        seconds = seconds_per_call(step, repeats, warmup=2)
        rates[precision] = batch / seconds
        print(f"{precision:>6}: {seconds:.3f} s/step, {rates[precision]:,.1f} images/s")
    print(f"bf16 / fp32 speed: {rates['bf16'] / rates['fp32']:.2f}x")

    augment = build_augmentation(cfg.augmentations, size)
    pixels = (torch.rand(batch, 3, size, size) * 255).to(torch.uint8)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    seconds = seconds_per_call(lambda: torch.stack([augment(image) for image in pixels]), repeats)
    torch.set_num_threads(previous)
    default = resolve_precision(cfg.precision, torch.device("cpu"))
    print(
        f"augmentation ({', '.join(cfg.augmentations)}), one worker thread: {batch / seconds:,.0f} images/s, "
        f"{batch / seconds / rates[default]:.1f}x the model's rate at the default precision ({default})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    repeats = 5 if args.quick else 20
    bench_loss(repeats)
    bench_training(max(3, repeats // 4))


if __name__ == "__main__":
    main()
