"""GPU speed: training images/s at fp32 and bf16, and embedding images/s eager and on onnxruntime's CUDA provider.

The training step is the library's own (`batch_loss` with autocast, AdamW as `build_optimizer` makes
it, gradient clipping), on random images at 224 px with a ResNet-50 and the default transformer,
P x K = 16 x 4; the rate is a fixed number of iterations after a warm-up, timed between CUDA
synchronisations. Embedding is eager PyTorch (eval, no grad) at batch 256, fp32 and bf16 autocast,
and, where onnxruntime has its CUDA provider, the exported fp32 graph at the same batch. Ratios are
against fp32 of the same row kind, measured in the same run.

    python benchmarks/gpu.py                       # about a minute on an H200
    python benchmarks/gpu.py --json gpu.json       # also write the table's numbers
    python benchmarks/gpu.py --backbone resnet18 --size 64

Without a CUDA device it says so and exits 0, so `make bench` stays usable on a CPU machine.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import get_args

import numpy as np
import torch

from replearn.config import BackboneName, Config, load_config
from replearn.training.loop import batch_loss, build_optimizer
from replearn.training.loss import CircleLoss
from replearn.training.model import build_model

# As training/loop.py's private _DTYPES (kept there unchanged: an edit to loop.py reruns DVC's train stage).
AUTOCAST_DTYPES = {"bf16": torch.bfloat16}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(
    step: Callable[[], object], device: torch.device, batch: int, iterations: int, warmup: int
) -> float:
    """`batch` x `iterations` / seconds of `iterations` calls after `warmup` untimed ones, synchronised."""
    for _ in range(warmup):
        step()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(iterations):
        step()
    synchronize(device)
    return batch * iterations / (time.perf_counter() - started)


def time_training(config: Config, device: torch.device, precision: str, iterations: int, warmup: int) -> float:
    cfg, size = config.train, config.preprocess.resize.size
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device)
    optimizer = build_optimizer(model, cfg)
    loss_fn = CircleLoss(cfg.loss.margin, cfg.loss.gamma)
    batch = cfg.classes_per_batch * cfg.images_per_class
    images = torch.rand(batch, 3, size, size, device=device)
    labels = torch.arange(cfg.classes_per_batch, device=device).repeat_interleave(cfg.images_per_class)

    def step() -> None:
        loss = batch_loss(model, loss_fn, images, labels, device, AUTOCAST_DTYPES.get(precision))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)
        optimizer.step()

    return images_per_second(step, device, batch, iterations, warmup)


def time_eager_embedding(
    config: Config, device: torch.device, precision: str, batch: int, iterations: int, warmup: int
) -> float:
    size = config.preprocess.resize.size
    torch.manual_seed(0)
    model = build_model(config.train.model).to(device).eval()
    images = torch.rand(batch, 3, size, size, device=device)
    dtype = AUTOCAST_DTYPES.get(precision)

    def step() -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            model(images)

    return images_per_second(step, device, batch, iterations, warmup)


def time_onnxruntime_cuda(
    config: Config, device: torch.device, batch: int, iterations: int, warmup: int
) -> float | str:
    """The exported fp32 graph on CUDAExecutionProvider, host arrays in and out as `replearn embed` feeds it."""
    import onnxruntime as ort

    if device.type != "cuda":
        return "n/a: not timing CUDA"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return f"n/a: onnxruntime {ort.__version__} has no CUDA provider"
    from replearn.embedding.onnx import OnnxEmbedder
    from replearn.export.onnx_export import export_model, load_parity_batch

    torch.manual_seed(0)
    model = build_model(config.train.model).eval()
    size = config.preprocess.resize.size
    with tempfile.TemporaryDirectory() as folder:
        parity = load_parity_batch(None, config.preprocess.resize, config.export.parity_images)
        exported = export_model(config.export, model, config, ["a"], Path(folder) / "model.onnx", parity, "random")
        embedder = OnnxEmbedder(exported.path, provider="cuda")
        images = np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)
        return images_per_second(lambda: embedder.embed_arrays(images), device, batch, iterations, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet50", choices=get_args(BackboneName))
    parser.add_argument("--size", type=int, default=224, help="input side in pixels")
    parser.add_argument("--iterations", type=int, default=30, help="timed training steps (embedding: batches)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (cuDNN autotuning, allocator)")
    parser.add_argument("--embed-batch", type=int, default=256)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a smoke run of the same code")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: torch.cuda.is_available() is false; nothing timed")
        return
    device = torch.device(args.device)
    config = load_config(None, [f"train.model.backbone.name={args.backbone}", f"preprocess.resize.size={args.size}"])
    torch.backends.cudnn.benchmark = True
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    batch = config.train.classes_per_batch * config.train.images_per_class
    what = f"{args.backbone}, {args.size} px"
    # (kind, what, images/s or why not): each kind's first row is the baseline of its ratios.
    rows: list[tuple[str, str, float | str]] = []
    for precision in ("fp32", "bf16"):
        rate = time_training(config, device, precision, args.iterations, args.warmup)
        rows.append(("train", f"{precision}, {what}, batch {batch}", rate))
    for precision in ("fp32", "bf16"):
        rate = time_eager_embedding(config, device, precision, args.embed_batch, args.iterations, args.warmup)
        rows.append(("embed", f"eager {precision}, batch {args.embed_batch}", rate))
    rate = time_onnxruntime_cuda(config, device, args.embed_batch, args.iterations, args.warmup)
    rows.append(("embed", f"onnxruntime CUDA fp32, batch {args.embed_batch}", rate))

    baselines: dict[str, float] = {}
    print(f"\n## {device_name}, torch {torch.__version__}: {args.iterations} timed iterations after {args.warmup}")
    print(f"{'stage':<6} {'how':<40} {'images/s':>10} {'x first row':>12}")
    for kind, how, value in rows:
        if isinstance(value, str):
            print(f"{kind:<6} {how:<40} {value}")
            continue
        baseline = baselines.setdefault(kind, value)
        print(f"{kind:<6} {how:<40} {value:>10,.0f} {value / baseline:>11.2f}x")
    if args.json:
        results = {"device": device_name, "torch": torch.__version__, "rows": [list(row) for row in rows]}
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
