"""`replearn compare`: how similar two images are, and whether clustering would link them (seed 003's use case)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from replearn.artifacts.threshold import read_threshold
from replearn.config import Config
from replearn.evaluation.embedding import embed_files, open_model


@dataclass(frozen=True)
class Comparison:
    similarity: float
    threshold: float | None
    threshold_source: str | None  # where the threshold came from, for the person reading the verdict

    @property
    def same_class(self) -> bool | None:
        """True when the pair passes the threshold; None when no threshold is known."""
        return None if self.threshold is None else self.similarity >= self.threshold

    def __rich__(self) -> str:
        lines = [f"cosine similarity: {self.similarity:.4f}"]
        if self.same_class is None:
            lines.append("no threshold known: pass --threshold or --threshold-file, or use a model with one")
        else:
            verdict, relation = ("same class", ">=") if self.same_class else ("different classes", "<")
            judged = f"{self.similarity:.4f} {relation} threshold {self.threshold:.4f}"
            lines.append(f"{verdict}: {judged} (from {self.threshold_source})")
        return "\n".join(lines)


def compare_images(
    config: Config,
    model_path: Path,
    image_a: Path,
    image_b: Path,
    threshold: float | None = None,
    threshold_file: Path | None = None,
) -> Comparison:
    """Cosine similarity of two images' embeddings, judged against the first threshold found among:
    `threshold`, `threshold_file` (a threshold.json or the evaluation folder holding it), the
    threshold in an ONNX model's metadata, and `cluster.threshold` from the config.
    """
    model = open_model(Path(model_path), config)
    first, second = embed_files(model.embedder, [Path(image_a), Path(image_b)], batch_size=2, description="comparing")
    similarity = float(first @ second)
    candidates = [
        (threshold, "--threshold"),
        (read_threshold(threshold_file) if threshold_file is not None else None, str(threshold_file)),
        (model.threshold, f"metadata of {model_path}"),
        (config.cluster.threshold, "cluster.threshold in the config"),
    ]
    for value, source in candidates:
        if value is not None:
            return Comparison(similarity, float(value), source)
    return Comparison(similarity, None, None)
