"""Embed image files in batches with any embedder: decoding runs on threads one batch ahead of the model.

Pillow releases the GIL while it decodes, so a thread pool keeps the model (onnxruntime or torch)
busy. What happens to a file that cannot be decoded is the caller's choice: the embed and cluster
stages skip it and list it (one odd file must not stop a scheduled run), evaluation raises (it needs
every labelled image).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from replearn.console import make_progress
from replearn.data.images import DECODE_ERRORS
from replearn.errors import UserError


class Embedder(Protocol):
    """What the embedding loop needs from a model: decode one file, embed one batch."""

    def load(self, path: Path) -> np.ndarray: ...

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray: ...


@dataclass
class EmbeddedPaths:
    """Row i of `embeddings` is `paths[kept[i]]`; `failures` holds (position, reason) of the files not embedded."""

    kept: list[int]
    embeddings: np.ndarray  # (len(kept), D) float32 as the model returned them; (0, 0) when none
    failures: list[tuple[int, str]] = field(default_factory=list)


def decode(embedder: Embedder, path: Path) -> np.ndarray | str:
    """The model input for one file, or the reason it could not be read."""
    try:
        return embedder.load(path)
    except DECODE_ERRORS as error:
        return f"{type(error).__name__}: {error}"


def embed_paths(
    embedder: Embedder,
    paths: Sequence[Path],
    batch_size: int = 64,
    workers: int = 0,
    on_error: Literal["skip", "raise"] = "skip",
    description: str = "embedding",
) -> EmbeddedPaths:
    """Embeddings of `paths` in order, `batch_size` at a time; `workers` decoding threads, 0 for one per core.

    on_error="skip" leaves an undecodable file out and records it in `failures`; "raise" stops at the
    first one with a UserError naming it.
    """
    kept: list[int] = []
    chunks: list[np.ndarray] = []
    failures: list[tuple[int, str]] = []
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool, make_progress() as progress:
        task = progress.add_task(description, total=len(paths), unit="images")

        def submit(start: int) -> list[tuple[int, Future[np.ndarray | str]]]:
            stop = min(start + batch_size, len(paths))
            return [(i, pool.submit(decode, embedder, paths[i])) for i in range(start, stop)]

        pending, start = submit(0), batch_size
        while pending:
            current, pending, start = pending, submit(start), start + batch_size
            arrays = []
            for position, future in current:
                decoded = future.result()
                if isinstance(decoded, str):
                    if on_error == "raise":
                        raise UserError(f"cannot read image {paths[position]}: {decoded}")
                    failures.append((position, decoded))
                else:
                    kept.append(position)
                    arrays.append(decoded)
            if arrays:
                chunks.append(embedder.embed_arrays(np.stack(arrays)))
            progress.advance(task, len(current))
    embeddings = np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)
    return EmbeddedPaths(kept, embeddings, failures)
