"""Sorted arrays of ids: millions of image_ids held as one numpy `S<width>` array, never as Python strings.

Resume (every committed image_id) and the simulated annotators' truth index (every truth image_id) each hold an
id per image of the run. As Python strings that is ~60 bytes an id plus the allocator's arenas, which a process
keeps after the list is gone; copied straight from the Arrow buffers it is the id's own bytes, and membership is
a binary search.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def fixed_width_bytes(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A string column as a numpy `S<width>` array (the same values `str.encode()` gives), copied from the Arrow
    buffers without a Python object per value. A null becomes b"" (no real image_id is empty)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    array = pc.fill_null(array.cast(pa.large_string()), "")  # one offset width (int64) for both string types
    _, offset_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offset_buffer, dtype=np.int64)[array.offset : array.offset + len(array) + 1]
    lengths = np.diff(offsets)
    width = max(int(lengths.max(initial=0)), 1)
    data = np.frombuffer(data_buffer, dtype=np.uint8)[offsets[0] : offsets[-1]] if len(array) else []
    out = np.zeros((len(array), width), dtype=np.uint8)
    out[np.arange(width) < lengths[:, None]] = data  # row-major fill: each row gets its own bytes, zero-padded
    return out.view(f"S{width}").ravel()


def contains_sorted(sorted_ids: np.ndarray, ids: list[str]) -> np.ndarray:
    """Membership of `ids` in a sorted bytes array by binary search.

    The array is shared zero-copy through Ray's object store, so every worker filters against millions of
    committed ids without building its own hash set.
    """
    if not len(sorted_ids) or not ids:
        return np.zeros(len(ids), dtype=bool)
    probe = np.array([i.encode() for i in ids])
    position = np.searchsorted(sorted_ids, probe).clip(max=len(sorted_ids) - 1)
    return sorted_ids[position] == probe
