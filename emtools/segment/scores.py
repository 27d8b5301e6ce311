"""Agglomeration scores: the one registry that ``--score``, :func:`parse_score` and the merge read.

A score is a merge cost ``1 - s``, ``s`` a statistic of the affinities along a contact. Each is
registered once, with :func:`score` on a numpy function that computes ``s`` for every edge of a
:class:`~emtools.segment.region_graph.RegionGraph` (the reference the compiled merge is tested
against). The registration names the score, says what it does (``--help``), how its optional
parameter is written and checked (``quantile:Q``) and which *compiled statistic* the merge kernel
evaluates for it. :data:`SCORES`, :func:`parse_score`, the kernel's statistic code, whether the
region graph needs histograms and em-agglomerate's ``--score`` help all come from here.

The merge kernel (:mod:`emtools.segment.agglomerate`) re-scores edges as regions merge, so
every statistic must be kept up to date by combining two edges' contact statistics (counts,
sums, min, max and histograms add); :func:`edge_cost` is its one dispatch over them.

To add a score: register it below with ``@score(name, statistic, help)``. If no compiled
statistic fits, add a code to :data:`STATISTICS` and its branch to :func:`edge_cost`, then
rebuild the kernels (``python -m emtools.native build``); tests/test_segment_scores.py checks
every registered score against its reference.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from emtools.errors import EmError
from emtools.native import helper
from emtools.segment.region_graph import histogram_quantile

__all__ = [
    "REGISTRY", "SCORES", "STATISTICS", "Parameter", "Score", "Statistic", "edge_cost", "get_score",
    "needs_histogram", "parse_score", "score", "score_help",
]


# ----------------------------------------------------------------------------- compiled statistics

@dataclasses.dataclass(frozen=True)
class Statistic:
    """A per-edge statistic that :func:`edge_cost` computes (``code`` is what the kernel gets)."""

    code: int
    reads: str  # the region graph's per-edge fields it is computed from
    histogram: bool = False  # needs the contact histograms (a region graph with bins > 0)


MEAN, MAXIMUM, MINIMUM, QUANTILE = 0, 1, 2, 3
# The table of compiled statistics: edge_cost has exactly one branch per code.
STATISTICS = {
    MEAN: Statistic(MEAN, "count, total"),
    MAXIMUM: Statistic(MAXIMUM, "maximum"),
    MINIMUM: Statistic(MINIMUM, "minimum"),
    QUANTILE: Statistic(QUANTILE, "histogram", histogram=True),
}


@helper
def edge_cost(e, statistic, q, count, total, lo, hi, hist):
    """Merge cost ``1 - s`` of edge ``e``, ``s`` its compiled statistic ``statistic``; ``q``: the
    score's parameter. NaN for a code without a branch (merge_history refuses those first)."""
    if statistic == MEAN:
        return 1.0 - total[e] / max(count[e], 1)
    if statistic == MAXIMUM:
        return 1.0 - np.float64(hi[e])
    if statistic == MINIMUM:
        return 1.0 - np.float64(lo[e])
    if statistic == QUANTILE:
        return 1.0 - histogram_quantile(hist[e], q)
    return np.nan


# ----------------------------------------------------------------------------- the registry

@dataclasses.dataclass(frozen=True)
class Parameter:
    """The optional value of a score, written ``name:VALUE`` (e.g. ``quantile:0.75``)."""

    symbol: str  # how --help names it: quantile[:Q]
    default: float
    parse: Callable[[str, str], float]  # (value text, whole score text) -> value; EmError if bad


@dataclasses.dataclass(frozen=True)
class Score:
    """One registered score (see :func:`score`)."""

    name: str
    statistic: int  # a code of STATISTICS
    help: str
    parameter: Parameter | None
    reference: Callable  # (RegionGraph, value) -> float64 statistic s per edge

    @property
    def syntax(self) -> str:
        return f"{self.name}[:{self.parameter.symbol}]" if self.parameter else self.name

    @property
    def needs_histogram(self) -> bool:
        return STATISTICS[self.statistic].histogram

    def label(self, value: float) -> str:
        """The score as a merge history records it: ``mean``, ``quantile:0.5``."""
        return f"{self.name}:{value:g}" if self.parameter else self.name


REGISTRY: dict[str, Score] = {}
# parse_score's value for a score without a parameter (merge_history's default quantile)
NO_VALUE = 0.5


def score(name: str, statistic: int, help: str, parameter: Parameter | None = None):
    """Register the decorated ``reference(graph, value) -> s per edge`` as score ``name``."""

    def register(reference):
        if name in REGISTRY:
            raise ValueError(f"score {name!r} is registered twice")
        if statistic not in STATISTICS:
            raise ValueError(f"score {name!r}: no compiled statistic {statistic} (see STATISTICS)")
        REGISTRY[name] = Score(name, statistic, help, parameter, reference)
        return reference

    return register


def get_score(name: str) -> Score:
    """The registered score ``name`` (a bare name, no ``:value``)."""
    spec = REGISTRY.get(name)
    if spec is None:
        raise EmError(f"unknown score {name!r}; choose one of {', '.join(REGISTRY)}")
    return spec


def needs_histogram(name: str) -> bool:
    """Whether score ``name`` needs a region graph with histograms (``bins > 0``)."""
    return get_score(name).needs_histogram


def _choices() -> str:
    syntaxes = [s.syntax for s in REGISTRY.values()]
    return syntaxes[0] if len(syntaxes) == 1 else f"{', '.join(syntaxes[:-1])} or {syntaxes[-1]}"


def parse_score(text: str) -> tuple[str, float]:
    """``name`` or ``name:VALUE`` -> (name, value); e.g. ``mean``, ``quantile`` (median), ``quantile:Q``."""
    name, _, value = str(text).partition(":")
    name = name.strip().lower()
    spec = REGISTRY.get(name)
    if spec is None:
        raise EmError(f"unknown score {text!r}; choose {_choices()}")
    if spec.parameter is None:
        if value:
            raise EmError(f"score {name} takes no value, got {text!r}")
        return name, NO_VALUE
    if not value:
        return name, spec.parameter.default
    return name, spec.parameter.parse(value, text)


def score_help() -> str:
    """em-agglomerate's ``--score`` help, one clause per registered score."""
    clauses = [f"{s.syntax} ({s.help})" for s in REGISTRY.values()]
    listed = clauses[0] if len(clauses) == 1 else f"{', '.join(clauses[:-1])} or {clauses[-1]}"
    return f"Merge cost 1 - s, s of the contact affinities: {listed}."


# ----------------------------------------------------------------------------- the scores

def _parse_fraction(value: str, text: str) -> float:
    """Q in (0, 1], or a percent in (1, 100]."""
    try:
        q = float(value)
    except ValueError:
        raise EmError(f"bad quantile in {text!r}; e.g. quantile:0.5 or quantile:50") from None
    if q > 1.0:
        q /= 100.0
    if not 0.0 < q <= 1.0:
        raise EmError(f"quantile must be in (0, 1] (or percent), got {value}")
    return q


@score("mean", MEAN, "their mean")
def mean(graph, value):
    return graph.mean


@score("max", MAXIMUM, "the largest")
def maximum(graph, value):
    return graph.maximum.astype(np.float64)


@score("min", MINIMUM, "the smallest")
def minimum(graph, value):
    return graph.minimum.astype(np.float64)


@score("quantile", QUANTILE,
       "Q in (0,1] or percent, default 0.5; from a histogram, as waterz's HistogramQuantileAffinity",
       Parameter("Q", 0.5, _parse_fraction))
def quantile(graph, value):
    return graph.quantile(value)


# Registered names in order. Registering happens in this module (its scores need the compiled
# statistics here), so the tuple is complete once the module is imported.
SCORES = tuple(REGISTRY)
