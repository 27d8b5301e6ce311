"""The ``compressed_segmentation`` chunk encoding of neuroglancer (numpy, vectorised over blocks).

Format (neuroglancer ``src/sliceview/compressed_segmentation/README.md``), single channel:

- one uint32 ``1`` (the channel's data starts at word 1), then the channel's data;
- ``gx*gy*gz`` block headers of two uint32 words each, block ``(x, y, z)`` at header index
  ``x + gx*(y + gy*z)``: word 0 = lookup-table offset (24 bits) | encoded bits << 24, word 1 =
  encoded-values offset; offsets count uint32 words from the start of the channel's data;
- per block: its values as indices into its lookup table, ``b`` bits each (0, 1, 2, 4, 8, 16 or
  32; 0 when the block holds one value), voxel ``(x, y, z)`` of the block at bit
  ``b*(x + bx*(y + by*z))``, packed into little-endian uint32 words; then the lookup table, the
  block's distinct values in increasing order, little-endian uint32 or uint64.

A chunk whose size is no multiple of the block is padded at its upper end with its last values
(the format allows any value of the partial block). Blocks are laid out in header order, values
then table; a block whose distinct values equal an earlier block's uses that block's table.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from emtools.errors import EmError

__all__ = ["encode"]

_BITS = (0, 1, 2, 4, 8, 16, 32)
_MAX_OFFSET = (1 << 24) - 1  # the lookup-table offset has 24 bits


def _bits_for(counts: np.ndarray) -> np.ndarray:
    """Encoded bits per block: the fewest of 0,1,2,4,8,16,32 that index ``counts`` values."""
    bits = np.zeros(counts.shape, dtype=np.int64)
    for b in _BITS[1:][::-1]:
        bits[counts <= (1 << b)] = b
    bits[counts <= 1] = 0
    return bits


def encode(chunk: np.ndarray, block_zyx: Sequence[int] = (8, 8, 8)) -> bytes:
    """Encode a (z, y, x) uint32 or uint64 chunk (one channel) as compressed_segmentation bytes."""
    chunk = np.asarray(chunk)
    if chunk.ndim == 4 and chunk.shape[0] == 1:
        chunk = chunk[0]
    if chunk.ndim != 3:
        raise EmError(f"compressed_segmentation encodes one (z, y, x) channel, got shape {chunk.shape}")
    if chunk.dtype.newbyteorder("=") not in (np.dtype(np.uint32), np.dtype(np.uint64)):
        raise EmError(f"compressed_segmentation stores uint32 or uint64 ids, not {chunk.dtype}")
    chunk = chunk.astype(chunk.dtype.newbyteorder("="), copy=False)
    table_words = chunk.dtype.itemsize // 4
    bz, by, bx = (int(b) for b in block_zyx)
    pad = [(0, (-s) % b) for s, b in zip(chunk.shape, (bz, by, bx))]
    padded = np.pad(chunk, pad, mode="edge") if any(p for _, p in pad) else chunk
    gz, gy, gx = (s // b for s, b in zip(padded.shape, (bz, by, bx)))
    # (blocks in header order, voxels in block order): x fastest in both
    blocks = padded.reshape(gz, bz, gy, by, gx, bx).transpose(0, 2, 4, 1, 3, 5).reshape(gz * gy * gx, bz * by * bx)
    n, k = blocks.shape

    # distinct values per block and each voxel's index into its block's sorted table
    flat = blocks.ravel()
    row = np.repeat(np.arange(n, dtype=np.int64), k)
    order = np.lexsort((flat, row))
    sorted_values = flat[order]
    new = np.ones(flat.size, dtype=bool)
    new[1:] = (sorted_values[1:] != sorted_values[:-1]) | (row[order][1:] != row[order][:-1])
    unique_id = np.cumsum(new) - 1
    first_id = unique_id[np.arange(n) * k]
    counts = unique_id[np.arange(n) * k + k - 1] - first_id + 1
    index = np.empty(flat.size, dtype=np.int64)
    index[order] = unique_id - first_id[row[order]]
    index = index.reshape(n, k)
    table_values = sorted_values[new]  # block by block, increasing within a block

    bits = _bits_for(counts)
    value_words = -(-k * bits // 32)  # whole words; a small block's last word is partly unused
    # blocks with the same distinct values share one lookup table (the first such block's)
    table_start = np.concatenate(([0], np.cumsum(counts)[:-1]))
    first_with: dict[bytes, int] = {}
    owner = np.array([first_with.setdefault(table_values[a:a + c].tobytes(), i)
                      for i, (a, c) in enumerate(zip(table_start, counts))], dtype=np.int64)
    owns = owner == np.arange(n)
    block_words = value_words + owns * counts * table_words
    values_offset = 2 * n + np.concatenate(([0], np.cumsum(block_words)[:-1]))
    table_offset = (values_offset + value_words)[owner]
    total = int(2 * n + block_words.sum())
    if n and int(table_offset.max()) > _MAX_OFFSET:
        raise EmError("a chunk is too large for compressed_segmentation (24-bit offsets); use a smaller --chunk")

    out = np.zeros(total, dtype=np.uint32)
    out[0 : 2 * n : 2] = (table_offset | (bits << 24)).astype(np.uint32)
    out[1 : 2 * n : 2] = values_offset.astype(np.uint32)
    for b in _BITS[1:]:
        chosen = np.flatnonzero(bits == b)
        if chosen.size == 0:
            continue
        per_word = 32 // b
        words_per_block = -(-k // per_word)
        idx = np.zeros((chosen.size, words_per_block * per_word), dtype=np.uint64)
        idx[:, :k] = index[chosen]
        idx = idx.reshape(chosen.size, words_per_block, per_word)
        shifts = (np.arange(per_word, dtype=np.uint64) * np.uint64(b))
        words = np.bitwise_or.reduce(idx << shifts, axis=2).astype(np.uint32)
        positions = values_offset[chosen][:, None] + np.arange(words_per_block)
        out[positions.ravel()] = words.ravel()
    # a uint64 entry is two little-endian words, low then high
    table = np.ascontiguousarray(table_values, dtype=table_values.dtype.newbyteorder("<")).view("<u4")
    table = table.reshape(-1, table_words)
    entry_block = np.repeat(np.arange(n), counts)
    written = owns[entry_block]
    local = np.arange(table_values.size) - table_start[entry_block]
    base = table_offset[entry_block] + local * table_words
    positions = (base[written][:, None] + np.arange(table_words)).ravel()
    out[positions] = table[written].ravel()
    return np.concatenate(([np.uint32(1)], out)).astype("<u4").tobytes()
