"""Tables kept as immutable segments: Arrow IPC files, memory-mapped, each sorted by the table's key.

A run appends one segment per table it changes, so what a run writes follows its batch. A keyed
table (images by key digest, clusters by id) lets a later segment's row supersede an earlier row
with the same key: a lookup searches the segments newest first, each with a binary search on its
memory-mapped key column, so it reads a few pages per key, not the table. Compaction merges the
newest segments of one level into one of the next level (four into one), keeping the newest row
per key: each row is rewritten once per level, so the amortised cost per run stays that of its
batch, and a table of N rows has O(log N) segments.

Arrow IPC files open with the tools users have: `pyarrow.dataset.dataset(folder, format="arrow")`,
`pandas.read_feather`, DuckDB over either (docs/cluster.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from replearn.atomic import atomic_path

SEGMENT_SUFFIX = ".arrow"
FANOUT = 4  # segments of one level merged into one of the next


def fsync_file(path: Path) -> None:
    """Make a file's bytes durable before the manifest that names it is replaced (no reordering on power loss)."""
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def write_segment(path: Path, table: pa.Table) -> None:
    """Write `table` as one Arrow IPC file, durably, under its final name only when complete."""
    with atomic_path(path) as temporary:
        with pa.OSFile(str(temporary), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table.combine_chunks())
        fsync_file(temporary)


def read_segment(path: Path) -> pa.Table:
    """A segment, memory-mapped: columns are views of the file's pages, read only where touched."""
    return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


def column_array(table: pa.Table, name: str) -> np.ndarray:
    """A primitive column as numpy (a zero-copy view of a memory-mapped segment when it has no nulls)."""
    return table.column(name).combine_chunks().to_numpy(zero_copy_only=False)


def vectors_of(table: pa.Table, name: str, dim: int) -> np.ndarray:
    """A fixed-size-list column as a (rows, dim) array (null rows read as zeros)."""
    values = table.column(name).combine_chunks()
    if len(values) == 0:
        return np.zeros((0, dim), dtype=np.float32)
    flat = values.values.to_numpy(zero_copy_only=False)
    offset = values.offset * dim
    return flat[offset : offset + len(values) * dim].reshape(len(values), dim)


def vector_column(vectors: np.ndarray, dtype: pa.DataType, mask: np.ndarray | None = None) -> pa.Array:
    """(rows, dim) numbers as a fixed-size-list column; `mask` marks rows that have none."""
    dim = vectors.shape[1]
    values = pa.array(np.ascontiguousarray(vectors).reshape(-1), type=dtype)
    if mask is None or not mask.any():
        return pa.FixedSizeListArray.from_arrays(values, dim)
    return pa.FixedSizeListArray.from_arrays(values, dim, mask=pa.array(mask))


@dataclass
class Segment:
    """One file of a table: its name (relative to the catalogue), row count and compaction level."""

    file: str
    rows: int
    level: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "rows": self.rows, "level": self.level}


@dataclass
class Table:
    """The live segments of one table, oldest first, as the manifest names them."""

    name: str
    key: str | None
    root: Path
    segments: list[Segment] = field(default_factory=list)
    _open: dict[str, pa.Table] = field(default_factory=dict, repr=False)

    def segment(self, index: int) -> pa.Table:
        """The segment at `index`, opened once per process."""
        file = self.segments[index].file
        if file not in self._open:
            self._open[file] = read_segment(self.root / file)
        return self._open[file]

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(segment index, row) of the newest row of each key; -1, -1 where no segment holds it.

        Newest segment first, and only the keys not yet found go on to older ones.
        """
        keys = np.asarray(keys)
        where = np.full(len(keys), -1, dtype=np.int64)
        rows = np.full(len(keys), -1, dtype=np.int64)
        for index in range(len(self.segments) - 1, -1, -1):
            pending = np.flatnonzero(where < 0)
            if len(pending) == 0:
                break
            stored = column_array(self.segment(index), self.key or "")
            if len(stored) == 0:
                continue
            positions = np.minimum(np.searchsorted(stored, keys[pending]), len(stored) - 1)
            hit = stored[positions] == keys[pending]
            where[pending[hit]] = index
            rows[pending[hit]] = positions[hit]
        return where, rows

    def take(self, where: np.ndarray, rows: np.ndarray) -> pa.Table:
        """The rows named by find() (all must exist), in the order given."""
        if len(where) == 0:
            return self.empty()
        parts, order = [], []
        for index in np.unique(where):
            selected = np.flatnonzero(where == index)
            parts.append(self.segment(int(index)).take(pa.array(rows[selected])))
            order.append(selected)
        combined = pa.concat_tables(parts, promote_options="default")
        return combined.take(pa.array(np.argsort(np.concatenate(order), kind="stable")))

    def empty(self) -> pa.Table:
        if not self.segments:
            raise ValueError(f"table {self.name} has no segment yet, so no schema")
        return self.segment(0).schema.empty_table()

    def read_all(self) -> pa.Table:
        """The whole table as users see it: for a keyed table, the newest row of every key, sorted by key."""
        if not self.segments:
            return pa.table({})
        return merge_tables([self.segment(i) for i in range(len(self.segments))], self.key)


def merge_tables(tables: list[pa.Table], key: str | None) -> pa.Table:
    """Oldest to newest tables as one: keyed, the newest row per key wins and rows are sorted by key."""
    combined = pa.concat_tables(tables, promote_options="default").combine_chunks()
    if key is None or combined.num_rows == 0:
        return combined
    keys = column_array(combined, key)
    # The last occurrence of each key is its newest row: unique over the reversed keys finds it.
    _, first_reversed = np.unique(keys[::-1], return_index=True)
    newest = len(keys) - 1 - first_reversed
    return combined.take(pa.array(newest))  # np.unique returns the keys sorted


def sort_by_key(table: pa.Table, key: str | None) -> pa.Table:
    """A new segment's rows in key order (its binary search needs it); keys must be unique in it."""
    if key is None:
        return table
    return table.take(pc.sort_indices(table, sort_keys=[(key, "ascending")]))


def due_merge(segments: list[Segment]) -> int:
    """How many of the newest segments are due to be merged: FANOUT of one level in a row, else 0.

    >>> due_merge([Segment("a", 9, 1), Segment("b", 1), Segment("c", 1), Segment("d", 1), Segment("e", 1)])
    4
    >>> due_merge([Segment("a", 9, 1), Segment("b", 1), Segment("c", 1)])
    0
    """
    if len(segments) < FANOUT:
        return 0
    tail = segments[-FANOUT:]
    return FANOUT if len({segment.level for segment in tail}) == 1 else 0
