"""One value-conversion layer: the words users type for numbers, triples, fractions and choices.

Every place that turns user input into a value (click option types, em-train's config schema,
model specs, augmentation options, the registries of scores, eval modes and execution options)
calls the converters here, so a value is spelled and checked the same way everywhere and the
"did you mean" hint is built once. Pure Python: no numpy, torch or click at import time (numpy
scalars are accepted through :mod:`numbers`).

Spellings, everywhere:

- numbers: ``1e-3``, ``160``; ``nan`` and ``inf`` are refused; ``True`` is not a number;
- true/false: ``true/false``, ``yes/no``, ``on/off``, ``1/0`` (text); a Python bool;
- a z,y,x triple: ``18,160,160`` (``[18, 160, 160]`` from YAML; one number means all three
  axes); model specs also keep accepting ``1x3x3``, but help, docs and messages print commas;
- a list of triples (model specs): ``[[1,2,2],[2,2,2]]``, as in a YAML file (or ``1x2x2,2x2x2``);
- a range: ``lo,hi`` (one number: that fixed value); a fraction: 0..1, with percent (``50``,
  ``50%``) where a place accepts it;
- a choice: case-folded, with aliases; a miss names the closest valid word.

Errors are one-line :class:`~emtools.errors.EmError`. How a message reads depends on where the
value came from, and every wording lives in the :class:`Wording` tables below:
:data:`SETTINGS` (``train.steps='ten' is not an integer``: config and spec keys, written
key=value), :data:`OPTIONS` (``rotate.angle_deg must be a number, got 'x'``: options of a library
function) and :data:`CLICK` (``'2,4' has 2 values; expected z,y,x (e.g. 64,512,512)``: click adds
the option's name). ``emtools.cli.common.ValueType`` turns any converter into a click type.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable

from emtools.errors import EmError

__all__ = [
    "CLICK", "CUTOFF", "OPTIONS", "SETTINGS", "Wording", "closest_name", "did_you_mean", "format_triple",
    "hint", "is_none", "optional", "to_axes", "to_bool", "to_choice", "to_float", "to_fraction", "to_int",
    "to_numbers", "to_range", "to_text", "to_triple", "to_triples", "unknown_choice",
]

CUTOFF = 0.5  # difflib ratio from which a word counts as a typo of a valid one
NONE_WORDS = ("", "none", "null", "~")

# ----------------------------------------------------------------------------- wording


@dataclasses.dataclass(frozen=True)
class Wording:
    """How one family of places words a bad value: ``templates[problem]`` with ``{subject}``
    (``subject`` formatted: who and what was given), ``{value!r}``, ``{number:g}``, ``{lo:g}``...,
    and how a "did you mean" hint reads (``hint`` with the match, else ``otherwise``)."""

    templates: Mapping[str, str]
    subject: str
    hint: str = "; did you mean '{}'?"
    otherwise: str = "; choose from {choices}"
    names_items: bool = True  # a bad number in a triple is named alone (else the whole text is)

    def error(self, problem: str, what: str, value: Any, **fields: Any) -> EmError:
        subject = self.subject.format(what=what, value=value)
        return EmError(self.templates[problem].format(subject=subject, what=what, value=value, **fields))

    def suggest(self, word: Any, choices: Sequence[str], cutoff: float = CUTOFF) -> str:
        return did_you_mean(word, choices, cutoff=cutoff, form=self.hint, otherwise=self.otherwise)


# "subject is not ..." (settings and click types: the subject names what the user wrote).
_IS_NOT = {
    "missing": "{what} needs a value",
    "integer": "{subject} is not an integer",
    "whole": "{subject} is not an integer",
    "number": "{subject} is not a number",
    "finite": "{subject} is not a finite number",
    "bool": "{subject} is not true/false",
    "text": "{subject} is not text",
    "axes": "{subject} is not letters of z, y, x (e.g. zyx or yx)",
    "at_least": "{subject} must be at least {lo:g}",
    "above": "{subject} must be above {lo:g}",
    "positive": "{subject} must be positive",
    "at_most": "{subject} must be at most {hi:g}",
    "below": "{subject} must be below {hi:g}",
    "fraction": "{subject} must lie in {interval}",
    "choice": "{subject} is unknown{hint}",
    "triple": "{subject} is not a z,y,x triple (e.g. {example})",
    "triple_count": "{subject} is not a z,y,x triple (e.g. {example})",
    "pair": "{subject} is not a pair lo,hi (or one number)",
    "order": "{subject}: lo {lo:g} is above hi {hi:g}",
    "empty": "{what} needs at least one number",
}

SETTINGS = Wording(_IS_NOT, subject="{what}={value!r}")
"""Config keys and model-spec keys (the user wrote ``key=value``): ``train.steps='ten' is not an integer``."""

CLICK = Wording({**_IS_NOT,
                 "missing": "a value is needed",
                 "choice": "{subject} is not one of {choices}{hint}",
                 "triple": "{subject} is not three comma-separated {numbers} z,y,x (e.g. {example})",
                 "triple_count": "{subject} has {count} values; expected z,y,x (e.g. {example})"},
                subject="{value!r}", otherwise="", names_items=False)
"""Click option types (click prefixes ``Invalid value for '--chunk':``): ``'2,4' has 2 values; ...``."""

OPTIONS = Wording({
    "missing": "{what} needs a value",
    "integer": "{what} must be a number, got {value!r}",
    "whole": "{what} must be a whole number, got {value!r}",
    "number": "{what} must be a number, got {value!r}",
    "finite": "{what} must be finite, got {value!r}",
    "bool": "{what} must be true or false, got {value!r}",
    "text": "{what} must be text, got {value!r}",
    "axes": "{what} must be letters of z, y, x (e.g. zyx or yx), got {value!r}",
    "at_least": "{what} must be >= {lo:g}, got {number:g}",
    "above": "{what} must be > {lo:g}, got {number:g}",
    "positive": "{what} must be positive, got {number:g}",
    "at_most": "{what} must be <= {hi:g}, got {number:g}",
    "below": "{what} must be < {hi:g}, got {number:g}",
    "fraction": "{what} must be in {interval}, got {value!r}",
    "choice": "{what} must be one of {choices}, got {value!r}{hint}",
    "triple": "{what} must be a z,y,x triple (e.g. {example}), got {value!r}",
    "triple_count": "{what} must be a z,y,x triple (e.g. {example}), got {value!r}",
    "pair": "{what} must be a pair of numbers lo,hi (or one number), got {value!r}",
    "order": "{what}: lo {lo:g} is above hi {hi:g}",
    "empty": "{what} needs at least one number, got {value!r}",
}, subject="{what}", hint=" (did you mean {}?)", otherwise="")
"""Options of library functions (augmentations), given as Python values: ``x must be ..., got v``."""


# ----------------------------------------------------------------------------- did you mean

def closest_name(word: str, choices: Iterable[str], cutoff: float = CUTOFF) -> str | None:
    """The valid name closest to ``word`` (difflib ratio >= ``cutoff``), or None."""
    match = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=cutoff)
    return match[0] if match else None


def did_you_mean(word: Any, choices: Iterable[str], *, cutoff: float = CUTOFF,
                 form: str = "; did you mean '{}'?", otherwise: str = "; choose from {choices}") -> str:
    """The hint that follows an unknown word: ``form`` with the closest choice, else ``otherwise``
    (``{choices}``: the choices, comma-separated; '' for no hint)."""
    choices = [str(c) for c in choices]
    return hint(closest_name(str(word), choices, cutoff), choices, form=form, otherwise=otherwise)


def hint(match: str | None, choices: Iterable[str], *, form: str = "; did you mean '{}'?",
         otherwise: str = "; choose from {choices}") -> str:
    """:func:`did_you_mean` for a match found another way (e.g. over several candidate lists)."""
    return form.format(match) if match else otherwise.format(choices=", ".join(str(c) for c in choices))


def unknown_choice(what: str, word: str, choices: Iterable[str], cutoff: float = CUTOFF) -> EmError:
    """``unknown WHAT 'word'; did you mean 'x'?`` (or the list of choices when none is close)."""
    return EmError(f"unknown {what} {word!r}{did_you_mean(word, choices, cutoff=cutoff)}")


# ----------------------------------------------------------------------------- scalars

def is_none(value: Any) -> bool:
    """None, or text that means none: '', none, null, ~ (any case)."""
    return value is None or (isinstance(value, str) and value.strip().lower() in NONE_WORDS)


def optional(convert: Callable[..., Any], value: Any, *args: Any, **kwargs: Any) -> Any:
    """None when ``value`` means none (:func:`is_none`), else ``convert(value, *args, **kwargs)``."""
    return None if is_none(value) else convert(value, *args, **kwargs)


def _is_bool(value: Any) -> bool:
    # numpy's bool is no numbers.Integral, and True must never pass as 1
    return isinstance(value, bool) or (type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"))


def _check_bounds(number: float, value: Any, what: str, say: Wording, lo: float | None, hi: float | None,
                  open_lo: bool, open_hi: bool) -> None:
    if lo is not None and (number <= lo if open_lo else number < lo):
        problem = ("positive" if lo == 0 else "above") if open_lo else "at_least"
        raise say.error(problem, what, value, number=number, lo=lo)
    if hi is not None and (number >= hi if open_hi else number > hi):
        raise say.error("below" if open_hi else "at_most", what, value, number=number, hi=hi)


def to_float(value: Any, what: str = "value", *, lo: float | None = None, hi: float | None = None,
             open_lo: bool = False, open_hi: bool = False, text: bool = True, say: Wording = SETTINGS) -> float:
    """A finite number within [lo, hi] (``open_lo``/``open_hi``: the bound itself is excluded).

    ``text``: also read text (``"1e-3"``); without it only numbers pass (library options)."""
    if _is_bool(value):
        raise say.error("number", what, value)
    if isinstance(value, numbers.Real):
        number = float(value)
    elif text and isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise say.error("number", what, value) from None
    else:
        raise say.error("number", what, value)
    if not math.isfinite(number):
        raise say.error("finite", what, value)
    _check_bounds(number, value, what, say, lo, hi, open_lo, open_hi)
    return number


def to_int(value: Any, what: str = "value", *, lo: float | None = None, hi: float | None = None,
           text: bool = True, say: Wording = SETTINGS) -> int:
    """An integer within [lo, hi]: text that is one (``"160"``, not ``"1.5"``) or a whole number."""
    if _is_bool(value):
        raise say.error("integer", what, value)
    if isinstance(value, numbers.Integral):
        number = int(value)
    elif isinstance(value, numbers.Real):
        if not math.isfinite(value):
            raise say.error("finite", what, value)
        if float(value) != int(value):
            raise say.error("whole", what, value)
        number = int(value)
    elif text and isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            raise say.error("integer", what, value) from None
    else:
        raise say.error("integer", what, value)
    _check_bounds(number, value, what, say, lo, hi, False, False)
    return number


TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")


def to_bool(value: Any, what: str = "value", *, text: bool = True, say: Wording = SETTINGS) -> bool:
    """A bool; with ``text`` also true/false, yes/no, on/off, 1/0 (text or the integers 1, 0)."""
    if _is_bool(value):
        return bool(value)
    if text:
        word = str(value).strip().lower()
        if word in TRUE_WORDS or word in FALSE_WORDS:
            return word in TRUE_WORDS
    raise say.error("bool", what, value)


def to_fraction(value: Any, what: str = "value", *, percent: bool = False, open_lo: bool = False,
                text: bool = True, say: Wording = SETTINGS) -> float:
    """A number in [0, 1] ((0, 1] with ``open_lo``). With ``percent``, a number above 1 or text
    ending in % is read as percent: ``50`` and ``50%`` are 0.5."""
    number = None
    if percent and text and isinstance(value, str) and value.strip().endswith("%"):
        number = to_float(value.strip()[:-1], what, say=say) / 100.0
    else:
        number = to_float(value, what, text=text, say=say)
        if percent and number > 1.0:
            number /= 100.0
    if (number <= 0.0 if open_lo else number < 0.0) or number > 1.0:
        interval = ("(0, 1]" if open_lo else "[0, 1]") + (" (or percent)" if percent else "")
        raise say.error("fraction", what, value, interval=interval)
    return number


def to_text(value: Any, what: str = "value", *, say: Wording = OPTIONS) -> str:
    if not isinstance(value, str):
        raise say.error("text", what, value)
    return value


def to_axes(value: Any, what: str = "value", *, say: Wording = OPTIONS) -> str:
    """Letters of z, y, x (``zyx``, ``yx``, ``z``)."""
    if not isinstance(value, str) or set(value) - set("zyx"):
        raise say.error("axes", what, value)
    return value


def to_choice(value: Any, what: str, choices: Sequence[str], *, aliases: Mapping[str, str] | None = None,
              fold_case: bool = True, cutoff: float = CUTOFF, say: Wording = SETTINGS) -> str:
    """One of ``choices``. ``fold_case``: text is stripped and lower-cased (a bool reads as
    true/false) before ``aliases`` map it; without it the value must be a choice as given."""
    word = value
    if fold_case:
        word = str(value).lower() if _is_bool(value) else str(value).strip().lower()
    if aliases and isinstance(word, str):
        word = aliases.get(word, word)
    if isinstance(word, str) and word in choices:
        return word
    raise say.error("choice", what, value, choices=", ".join(choices), hint=say.suggest(word, choices, cutoff))


# ----------------------------------------------------------------------------- triples, lists, ranges

def format_triple(values: Iterable[Any]) -> str:
    """``1,3,3``: how every message and help text prints a z,y,x triple."""
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _unbracketed(text: str) -> str:
    text = text.strip()
    return text[1:-1] if text.startswith("[") and text.endswith("]") else text


def _parts(value: Any, allow_x: bool) -> list:
    """The items of a comma list (text, ``[a, b]`` text too) or of a sequence; one scalar is one item."""
    if isinstance(value, str):
        body = _unbracketed(value)
        if not body.strip():
            return []
        sep = "x" if allow_x and "x" in body and "," not in body else ","
        return [p.strip() for p in body.split(sep)]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def to_triple(value: Any, what: str = "value", *, integer: bool = True, positive: bool = True,
              allow_x: bool = False, single: bool = True, example: str | None = None,
              say: Wording = SETTINGS) -> tuple:
    """A z,y,x triple of ints (or floats): ``18,160,160``, ``[18, 160, 160]``, one number for all
    three axes (``single``), ``18x160x160`` too with ``allow_x``. ``positive``: every value > 0."""
    example = example or ("18,160,160" if integer else "40,4,4")
    convert = to_int if integer else to_float
    parts = _parts(value, allow_x)
    if not parts:
        raise say.error("triple", what, value, numbers="integers" if integer else "numbers", example=example)
    try:
        numbers_zyx = tuple(convert(p, what, say=say) for p in parts)
    except EmError:
        if say.names_items:
            raise
        raise say.error("triple", what, value, numbers="integers" if integer else "numbers", example=example) from None
    if single and len(numbers_zyx) == 1:
        numbers_zyx = numbers_zyx * 3
    if len(numbers_zyx) != 3:
        raise say.error("triple_count", what, value, count=len(numbers_zyx), example=example,
                        numbers="integers" if integer else "numbers")
    if positive and min(numbers_zyx) <= 0:
        raise say.error("positive", what, value, number=min(numbers_zyx))
    return numbers_zyx


_BRACKETED = re.compile(r"\[([^\[\]]*)\]")


def to_triples(value: Any, what: str = "value", *, example: str = "1,3,3", say: Wording = SETTINGS,
               **triple: Any) -> tuple[tuple, ...]:
    """A list of z,y,x triples: ``[[1,2,2],[2,2,2]]`` (text or YAML), ``1x2x2,2x2x2``, or one triple
    (``1,3,3``, ``[1,3,3]``, ``3``). Keyword arguments go to :func:`to_triple` (``allow_x`` is on)."""
    triple.setdefault("allow_x", True)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and _BRACKETED.search(text[1:]):
            inner = text[1:-1] if text.endswith("]") else text
            if _BRACKETED.sub("", inner).replace(",", "").strip() or not text.endswith("]"):
                raise say.error("triple", what, value, numbers="integers", example=f"[[{example}],[{example}]]")
            items = _BRACKETED.findall(inner)
        elif "x" in text and triple["allow_x"]:
            items = [v for v in text.split(",") if v.strip()]
        else:
            items = [value]
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, (list, tuple, str)) for v in value):
        items = list(value)
    else:
        items = [value]
    return tuple(to_triple(item, what, example=example, say=say, **triple) for item in items)


def to_numbers(value: Any, what: str = "value", *, integer: bool = False, text: bool = True,
               say: Wording = SETTINGS) -> list:
    """A non-empty list of numbers: ``0.3,0.5,0.7``, ``[0.3, 0.5]``, a sequence, or one number."""
    convert = to_int if integer else to_float
    parts = _parts(value, allow_x=False) if text or not isinstance(value, str) else [value]
    if not parts:
        raise say.error("empty", what, value)
    return [convert(p, what, text=text, say=say) for p in parts]


def to_range(value: Any, what: str = "value", *, integer: bool = False, lo: float | None = None,
             hi: float | None = None, text: bool = False, say: Wording = OPTIONS) -> tuple:
    """A pair ``(lo, hi)`` with lo <= hi, each within [``lo``, ``hi``]; one number is that fixed
    value. ``integer``: whole numbers (both ends included where drawn). With ``text``, ``"lo,hi"``."""
    items = value
    if text and isinstance(value, str):
        items = _parts(value, allow_x=False)
        items = items * 2 if len(items) == 1 else items
    elif isinstance(value, numbers.Real) and not _is_bool(value):
        items = (value, value)
    if isinstance(items, str) or not isinstance(items, Sequence) or len(items) != 2:
        raise say.error("pair", what, value)
    convert = to_int if integer else to_float
    pair = tuple(convert(v, what, text=text, say=say) for v in items)
    if pair[0] > pair[1]:
        raise say.error("order", what, value, lo=pair[0], hi=pair[1])
    for number in pair:
        _check_bounds(number, number, what, say, lo, hi, False, False)
    return pair
