"""One value-conversion layer: the words users type for sizes, triples, fractions and choices.

Every place that turns user text into a value (click option types, the training config schema,
model specs, augmentation options, registries of scores, eval modes and execution options) calls
the functions here, so the same value is spelled and checked the same way everywhere and the
"did you mean" hint is built once. Pure Python: no numpy, torch or click at import time.

Errors are :class:`~emtools.errors.EmError` with one line that names what was wrong.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from emtools.errors import EmError

__all__ = ["closest_name", "unknown_choice"]


def closest_name(word: str, choices: Iterable[str], cutoff: float = 0.5) -> str | None:
    """The valid name closest to ``word`` (difflib ratio >= ``cutoff``), or None."""
    match = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=cutoff)
    return match[0] if match else None


def unknown_choice(what: str, word: str, choices: Iterable[str], cutoff: float = 0.5) -> EmError:
    """``unknown WHAT 'word'; did you mean 'x'?`` (or the list of choices when none is close)."""
    choices = list(choices)
    match = closest_name(word, choices, cutoff)
    hint = f"; did you mean '{match}'?" if match else f"; choose from {', '.join(choices)}"
    return EmError(f"unknown {what} {word!r}{hint}")
