"""Manifest throughput on generated images: 1 process vs all cores, and a cached rerun, in the same run.

    .venv/bin/python benchmarks/validate.py [--images 10000] [--size 128]

Prints images/s for each setting and the ratios against the 1-process baseline. The images are
JPEGs of smooth random colour fields (compressible like photos, unlike pure noise), in 100 classes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from replearn.config import Config
from replearn.data.manifest import build_manifest, resolve_workers
from replearn.data.validation import validate_dataset

CLASSES = 100


def generate(root: Path, images: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for index in range(images):
        folder = root / f"class_{index % CLASSES:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
        image.save(folder / f"img_{index:06d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=128, help="side of the generated images in pixels")
    args = parser.parse_args()
    config = Config()
    max_pixels = config.validate_.max_pixels
    cores = resolve_workers(0)
    work = Path(tempfile.mkdtemp(prefix="replearn-bench-validate-"))
    try:
        data = work / "raw"
        started = time.perf_counter()
        generate(data, args.images, args.size)
        print(f"generated {args.images:,} JPEGs of {args.size}x{args.size} px in {time.perf_counter() - started:.1f} s")

        serial = build_manifest(data, work / "serial" / "manifest.parquet", max_pixels, workers=1)
        parallel = build_manifest(data, work / "parallel" / "manifest.parquet", max_pixels, workers=cores)
        cached = build_manifest(data, work / "parallel" / "manifest.parquet", max_pixels, workers=cores)
        assert cached.cached == cached.files == args.images, "the rerun should be served from the cache"
        started = time.perf_counter()
        validate_dataset(config, data, work / "parallel")
        full = time.perf_counter() - started

        base = serial.images_per_second
        print(f"{'manifest':<34}{'seconds':>10}{'images/s':>12}{'vs 1 process':>14}")
        for label, stats in (
            ("1 process", serial),
            (f"{cores} processes (all cores)", parallel),
            ("cached rerun", cached),
        ):
            rate = stats.images_per_second
            print(f"{label:<34}{stats.seconds:>10.2f}{rate:>12,.0f}{rate / base:>13.1f}x")
        print(f"{'validate, cached (manifest + GX)':<34}{full:>10.2f}")
        print(f"(os.cpu_count()={os.cpu_count()}, usable cores={cores})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
