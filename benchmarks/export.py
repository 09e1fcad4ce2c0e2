"""Inference speed of the exported model: onnxruntime (dynamo and TorchScript graphs, int8) against eager PyTorch.

Builds the default model (params defaults: ResNet-18, d_model 128, 3 layers, 128-dim, 64 px) with
random weights, exports it through the real export stage with both exporters (plus the int8
variant of the dynamo graph), then measures images/s at batch 1 and 64 on this CPU. Engines are
measured in turns, best of several rounds, so a noisy neighbour on the machine hits them alike;
the ratio column is against eager PyTorch from the same run. Speed does not depend on the weights.

    python benchmarks/export.py             # 64 px, batches 1 and 64
    python benchmarks/export.py --rounds 2  # quicker
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch

from replearn.artifacts.checkpoint import save_checkpoint
from replearn.config import load_config
from replearn.data.chars import generate_chars
from replearn.embedding.onnx import OnnxEmbedder
from replearn.errors import UserError
from replearn.export.onnx_export import ExportResult
from replearn.stages.export import stage as export_stage
from replearn.training.model import build_model, load_model

BATCHES = (1, 64)
MIN_SECONDS = 1.0


def images_per_second(run: Callable[[np.ndarray], object], batch: np.ndarray) -> float:
    """Repeat `run` for at least MIN_SECONDS after one warm-up call."""
    run(batch)
    calls, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < MIN_SECONDS:
        run(batch)
        calls += 1
    return calls * len(batch) / elapsed


def export(checkpoint: Path, images: Path, out: Path, exporter: str, quantize: str) -> tuple[ExportResult, float]:
    config = load_config(None, [f"export.exporter={exporter}", f"export.quantize={quantize}"])
    started = time.perf_counter()
    result = export_stage(config, checkpoint, out, images)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64, help="input side in pixels")
    parser.add_argument("--rounds", type=int, default=3, help="turns per engine; the best one counts")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for both runtimes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(args.threads)
    config = load_config(None, [f"preprocess.resize.size={args.size}"])
    with tempfile.TemporaryDirectory(prefix="replearn-bench-export-") as scratch:
        root = Path(scratch)
        generate_chars(root / "images", per_class=1, size=args.size, seed=0)
        torch.manual_seed(0)
        checkpoint = root / "best.pt"
        payload = {"model": build_model(config.train.model).state_dict(), "classes": []}
        save_checkpoint(checkpoint, {**payload, "config": config.model_dump(mode="json", by_alias=True)})
        dynamo, dynamo_seconds = export(checkpoint, root / "images", root / "dynamo.onnx", "dynamo", "int8")
        try:
            export(checkpoint, root / "images", root / "script.onnx", "torchscript", "int8")
            script_int8 = "passes"
        except UserError as error:
            script_int8 = f"fails: {str(error).split(';')[0]}"
        script, script_seconds = export(checkpoint, root / "images", root / "script.onnx", "torchscript", "none")
        load = os.getloadavg()[0]
        print(f"model: {config.train.model.backbone.name}, d_model {config.train.model.d_model}, "
              f"{config.train.model.layers} layers, {args.size} px; {args.threads} threads, {os.cpu_count()} cores, "
              f"load average {load:.1f}")  # fmt: skip
        for name, result, seconds in (("dynamo", dynamo, dynamo_seconds), ("torchscript", script, script_seconds)):
            nodes = len(onnx.load(str(result.path)).graph.node)
            parity = result.parity
            print(f"  {name:<12} export {seconds:5.1f} s, opset {result.opset}, {nodes} nodes, parity max abs diff "
                  f"{parity.max_abs_diff:.1e}, min cosine {parity.min_cosine:.6f}")  # fmt: skip
        int8_path, int8_parity = dynamo.variants["int8"]
        print(f"  int8 of the dynamo graph (MatMul/Gemm weights): min cosine to eager {int8_parity.min_cosine:.6f}")
        print(f"  int8 of the torchscript graph {script_int8}")

        model, _, _ = load_model(checkpoint)

        def eager(batch: np.ndarray) -> object:
            with torch.inference_mode():
                return model(torch.from_numpy(batch))

        engines: dict[str, Callable[[np.ndarray], object]] = {"eager PyTorch": eager}
        for name, path in (("ort dynamo", dynamo.path), ("ort torchscript", script.path), ("ort int8", int8_path)):
            engines[name] = OnnxEmbedder(path, provider="cpu", threads=args.threads).embed_arrays
        rng = np.random.default_rng(0)
        print(f"\n{'engine':<16}" + "".join(f"{f'batch {b} img/s':>17}{'ratio':>7}" for b in BATCHES))
        best = {(name, b): 0.0 for name in engines for b in BATCHES}
        for batch_size in BATCHES:
            batch = rng.random((batch_size, 3, args.size, args.size), dtype=np.float32)
            for _ in range(args.rounds):
                for name, run in engines.items():
                    best[name, batch_size] = max(best[name, batch_size], images_per_second(run, batch))
        for name in engines:
            cells = [f"{best[name, b]:>17.1f}{best[name, b] / best['eager PyTorch', b]:>6.2f}x" for b in BATCHES]
            print(f"{name:<16}" + "".join(cells))


if __name__ == "__main__":
    main()
