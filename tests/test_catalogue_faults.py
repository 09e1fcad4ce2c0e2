"""kill -9 at random moments of scheduled runs and their compactions: nothing committed is lost, nothing doubles."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from replearn.catalogue.read import read_table
from replearn.catalogue.store import load_catalogue

BATCH = 12
# A child that clusters batch after batch into OUT, printing each batch once it is committed; batch i's
# images are always the same, so a batch killed before its commit is simply done again by the next child.
CHILD = f"""
import sys
from pathlib import Path
import numpy as np
from replearn.clustering.cluster import ImageBatch, cluster_embeddings_into
from replearn.config import ClusterConfig

out, first = Path(sys.argv[1]), int(sys.argv[2])
for i in range(first, first + 1000):
    rng = np.random.default_rng(i)
    labels = rng.integers(0, 6, size={BATCH})
    points = np.eye(16)[labels] + 0.05 * rng.normal(size=({BATCH}, 16))
    paths = [f"b{{i:04d}}/{{label}}_{{j}}.png" for j, label in enumerate(labels)]
    images = ImageBatch(paths=paths, sha256=paths, sources=paths, embeddings=points.astype(np.float32))
    cluster_embeddings_into(ClusterConfig(min_size=3), images, out, 0.8, "m")
    print(i, flush=True)
"""


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_nothing_committed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    rng = np.random.default_rng(0)
    committed = -1
    for _ in range(20):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(out), str(committed + 1)], stdout=subprocess.PIPE, text=True
        )
        time.sleep(1.5 + rng.uniform(0.0, 1.5))  # imports take about a second; then runs and compactions
        child.kill()
        output, _ = child.communicate()
        committed = max([committed, *(int(line) for line in output.split())])

        catalogue = load_catalogue(out)  # it reads, whatever the moment of the kill
        if catalogue.run == 0:
            continue  # killed before its first commit (a slow start): nothing to lose yet
        images = read_table(out, "images")
        batches = images["path"].str.slice(1, 5).astype(int)
        assert images["key"].is_unique and images["cluster_id"].notna().all()
        assert set(batches) >= set(range(committed + 1))  # every batch reported committed is there ...
        assert set(batches) <= set(range(committed + 2))  # ... and at most the one killed after its commit
        assert len(images) == BATCH * len(set(batches))  # ... whole
        clusters = read_table(out, "clusters")
        assert clusters["size"].sum() == (images["cluster_id"] > 0).sum()  # each image counted once
        assert catalogue.run == len(set(batches)) == len(read_table(out, "runs"))
        committed = max(committed, *batches)
        on_disk = {p.relative_to(catalogue.directory).as_posix() for p in catalogue.directory.rglob("*.arrow")}
        named = {s.file for t in catalogue.tables.values() for s in t.segments}
        assert named <= on_disk  # leftovers of the killed run may remain until the next commit removes them
    assert committed >= 5  # enough runs, and compactions (every fourth run), were interrupted
