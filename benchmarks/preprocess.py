"""Preprocess and loader speed, each against a baseline measured in the same run.

1. The preprocess stage (hash, decode, EXIF, RGB, resize, PNG, on threads) vs a plain serial
   Pillow loop (open, convert, resize, save) over the same files: on the chars demo data
   (small PNGs) and on synthetic 640x480 JPEG photos, plus a rerun with nothing to do, with and
   without validation's hashes (good_files.csv, which spares reading unchanged sources).
2. The training loader (PreprocessedImages.load_batch of P x K images from memory) vs the
   model's forward + backward pass at the default settings: the loader must not be the
   bottleneck. Also shown: decoding every batch from disk with load_image, for contrast.

Run: .venv/bin/python benchmarks/preprocess.py [--per-class 40] [--photos 300]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from replearn.config import Config
from replearn.data.chars import generate_chars
from replearn.data.images import load_image
from replearn.data.preprocess import list_images, preprocess
from replearn.data.splits import read_splits
from replearn.data.validation import GOOD_FILES_NAME, validate_dataset
from replearn.training.data import PreprocessedImages
from replearn.training.model import build_model


def rate(count: int, work: Callable[[], object], repeats: int = 1) -> float:
    """Items per second of `work` (best of `repeats`)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return count / best


def make_photos(root: Path, count: int, classes: int = 10) -> None:
    """Smooth random colour fields with noise, saved as 640x480 JPEGs: stand-ins for camera photos."""
    rng = np.random.default_rng(0)
    for index in range(count):
        low = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(low).resize((640, 480), Image.Resampling.BICUBIC), dtype=np.int16)
        noisy = np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)
        folder = root / f"class_{index % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noisy).save(folder / f"session{index % 7}_{index:05d}.jpg", quality=90)


def plain_pillow_loop(data_dir: Path, out_dir: Path, size: int) -> None:
    """The baseline: what a short script would do, one file after another."""
    for _, source in list_images(data_dir):
        target = out_dir / source
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(data_dir / source) as image:
            image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC).save(target.with_suffix(".png"))


def bench_stage(name: str, data_dir: Path, work_dir: Path, config: Config) -> None:
    count = len(list_images(data_dir))
    size = config.preprocess.resize.size
    baseline = rate(count, lambda: plain_pillow_loop(data_dir, work_dir / f"{name}-pillow", size))
    out = work_dir / f"{name}-stage"
    stage = rate(count, lambda: preprocess(config, data_dir, out))
    rerun = rate(count, lambda: preprocess(config, data_dir, out))
    report = work_dir / f"{name}-report"
    validate_dataset(config, data_dir, report, on_error="quarantine")
    listed = rate(count, lambda: preprocess(config, data_dir, out, only=report / GOOD_FILES_NAME))
    print(f"{name}: {count} images -> {size}px, {config.preprocess.workers or 'all'} workers")
    print(f"  plain serial Pillow loop   {baseline:9,.0f} images/s")
    print(f"  preprocess stage           {stage:9,.0f} images/s   {stage / baseline:5.2f}x the Pillow loop")
    print(f"  rerun, nothing to do       {rerun:9,.0f} images/s   {rerun / baseline:5.2f}x the Pillow loop")
    print(f"  same, --only good_files    {listed:9,.0f} images/s   {listed / baseline:5.2f}x the Pillow loop")


def bench_loader(preprocessed: Path, config: Config, batches: int) -> None:
    table = read_splits(preprocessed)
    rows = table[(table["subset"] == "seen") & (table["split"] == "train")]
    p, k = config.train.classes_per_batch, config.train.images_per_class
    batch = p * k
    start = time.perf_counter()
    data = PreprocessedImages(preprocessed, rows)
    load_rate = len(data) / (time.perf_counter() - start)
    rng = np.random.default_rng(0)
    index_batches = [rng.integers(0, len(data), batch) for _ in range(batches)]

    def gather() -> None:
        for indices in index_batches:
            data.load_batch(indices)

    def gather_float() -> None:
        for indices in index_batches:
            data.load_batch(indices)[0].float().div_(255)

    def decode_each_batch() -> None:
        for indices in index_batches[: max(1, batches // 10)]:
            resize = config.preprocess.resize
            torch.stack([torch.from_numpy(np.array(load_image(data.paths[i], resize))) for i in indices])

    loader = rate(batch * batches, gather, repeats=3)
    loader_float = rate(batch * batches, gather_float, repeats=3)
    from_disk = rate(batch * max(1, batches // 10), decode_each_batch)

    model, model_name = build_model(config.train.model), "replearn build_model (default config)"
    model.train()
    size = config.preprocess.resize.size
    images = torch.rand(batch, 3, size, size)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def step() -> None:
        optimizer.zero_grad()
        model(images).square().mean().backward()
        optimizer.step()

    step()
    model_rate = rate(batch * 5, lambda: [step() for _ in range(5)])
    print(f"loader: {len(data)} seen train images, batches of P x K = {p} x {k} = {batch}, {size}px")
    print(f"  decode all into memory     {load_rate:9,.0f} images/s (once, at start-up)")
    print(f"  load_batch (uint8)         {loader:9,.0f} images/s   {loader / model_rate:7.1f}x the model")
    print(f"  load_batch + float /255    {loader_float:9,.0f} images/s   {loader_float / model_rate:7.1f}x the model")
    print(f"  load_image per item        {from_disk:9,.0f} images/s   {from_disk / model_rate:7.1f}x the model")
    threads = torch.get_num_threads()
    print(f"  model forward+backward     {model_rate:9,.0f} images/s   ({model_name}, {threads} threads)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=40, help="chars images per class (62 classes)")
    parser.add_argument("--photos", type=int, default=300, help="synthetic 640x480 JPEG photos")
    parser.add_argument("--batches", type=int, default=200, help="loader batches to time")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    config = Config()
    work = Path(tempfile.mkdtemp(prefix="replearn-bench-preprocess-"))
    try:
        chars = work / "chars"
        generate_chars(chars, per_class=args.per_class, size=config.data.size, seed=0)
        photos = work / "photos"
        make_photos(photos, args.photos)
        bench_stage("chars demo PNGs", chars, work, config)
        bench_stage("640x480 JPEG photos", photos, work, config)
        bench_loader(work / "chars demo PNGs-stage", config, args.batches)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
