"""Small tab-separated text tables: ``# key=value`` comment lines, a header row, one row per entry.

The chunked segmentation steps exchange their merge histories, offsets, edge and look-up tables
in this form (see :mod:`emtools.segment.tables` for those four formats): plain text that ``awk``,
``sort`` and pandas read, written atomically (an interrupted run leaves no half table). This
module knows nothing about what the columns mean::

    # emtools edge table score=mean until=0.6        <- comments; words with '=' become info
    u	v	score	area                                 <- header (checked on reading)
    3	17	0.21	40                                   <- rows (text; the caller converts)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from emtools.errors import EmError
from emtools.io.writers import atomic_text

__all__ = ["float_column", "format_float", "id_column", "read_table", "write_table"]


def write_table(path: str, comments: Sequence[str], header: Sequence[str], columns: Sequence[np.ndarray],
                formats: Sequence[str]) -> None:
    """Write ``# comment`` lines, the header row, then row i of every column with ``formats``
    (``%``-style, one per column). Atomic: the table appears at ``path`` only when complete."""
    if not len(header) == len(columns) == len(formats):
        raise ValueError("write_table needs one column and one format per header name")
    with atomic_text(path) as handle:
        for line in comments:
            handle.write(f"# {line}\n")
        handle.write("\t".join(header) + "\n")
        rows = zip(*[c.tolist() for c in columns])
        fmt = "\t".join(formats) + "\n"
        handle.writelines(fmt % row for row in rows)


def read_table(path: str, header: Sequence[str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(``key=value`` words of the comments, {column: [text]}); one-line errors when malformed.

    The first non-comment line must start with ``header``; extra trailing columns are ignored.
    """
    header = list(header)
    if not os.path.isfile(path):
        raise EmError(f"no such file: {path}")
    info: dict[str, str] = {}
    columns: dict[str, list[str]] = {name: [] for name in header}
    seen_header = False
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            line = line.rstrip("\n")
            if line.startswith("#"):
                for item in line[1:].split():
                    key, sep, value = item.partition("=")
                    if sep:
                        info[key] = value
                continue
            if not line.strip():
                continue
            fields = line.split("\t")
            if not seen_header:
                if fields[: len(header)] != header:
                    raise EmError(f"{path} is not a table with columns {' '.join(header)} (line {number})")
                seen_header = True
                continue
            if len(fields) < len(header):
                raise EmError(f"{path}: line {number} has {len(fields)} fields, expected {len(header)}")
            for name, value in zip(header, fields):
                columns[name].append(value)
    if not seen_header:
        raise EmError(f"{path} is empty or not a table with columns {' '.join(header)}")
    return info, columns


def id_column(values: Sequence[str], path: str) -> np.ndarray:
    """Non-negative integers (fragment ids, counts) as uint64; one-line error naming ``path``."""
    try:
        return np.array([int(v) for v in values], dtype=np.uint64)
    except (ValueError, OverflowError):
        raise EmError(f"{path}: bad fragment id in the table") from None


def float_column(values: Sequence[str], path: str) -> np.ndarray:
    """Numbers (``inf`` allowed) as float64; one-line error naming ``path``."""
    try:
        return np.array([float(v) for v in values], dtype=np.float64)
    except ValueError:
        raise EmError(f"{path}: bad number in the table") from None


def format_float(value: float) -> str:
    """Text that reads back to the same float: ``repr``, and ``inf`` for infinity."""
    return "inf" if math.isinf(value) else repr(float(value))
