"""emtools.segment.scores: the registry drives parsing, --help and the merge kernel's statistic."""

import dataclasses

import click
import numpy as np
import pytest

from emtools.errors import EmError
from emtools.segment import agglomerate as A
from emtools.segment import region_graph as R
from emtools.segment import scores as S


def disjoint_pairs_graph(pairs=6, seed=0):
    """A region graph whose edges share no fragment: fragments 2k+1 and 2k+2 touch along 3 rows
    of x-contacts, with random affinities, and nothing else touches. Every edge then merges at
    exactly its initial cost, so the history's costs are 1 - the statistic of each edge."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((1, 3, 5 * pairs), np.uint64)
    for k in range(pairs):
        labels[0, :, 5 * k: 5 * k + 2] = 2 * k + 1
        labels[0, :, 5 * k + 2: 5 * k + 4] = 2 * k + 2
    affs = (0.05 + 0.9 * rng.random((3,) + labels.shape)).astype(np.float32)
    return R.region_graph(labels, affinities=affs, bins=256)


def test_the_registry_is_what_scores_and_parse_score_offer():
    assert A.SCORES == S.SCORES == tuple(S.REGISTRY) == ("mean", "max", "min", "quantile")
    assert A.parse_score is S.parse_score
    for spec in S.REGISTRY.values():
        assert S.parse_score(spec.name)[0] == spec.name
        assert S.parse_score(spec.name.upper())[0] == spec.name
        if spec.parameter:
            assert S.parse_score(f"{spec.name}:{spec.parameter.default}") == (spec.name, spec.parameter.default)


def test_every_registered_score_has_a_compiled_statistic_the_kernel_handles():
    graph = disjoint_pairs_graph()
    args = (graph.count, graph.total, graph.minimum, graph.maximum, graph.histogram)
    for spec in S.REGISTRY.values():
        assert spec.statistic in S.STATISTICS, spec.name
    for code in S.STATISTICS:
        assert np.isfinite(S.edge_cost(0, code, 0.5, *args)), f"edge_cost has no branch for statistic {code}"
    assert np.isnan(S.edge_cost(0, max(S.STATISTICS) + 1, 0.5, *args))  # the fall-through


def test_statistics_name_region_graph_fields():
    fields = {f.name for f in dataclasses.fields(R.RegionGraph)}
    for statistic in S.STATISTICS.values():
        assert {name.strip() for name in statistic.reads.split(",")} <= fields
        assert statistic.histogram == ("histogram" in statistic.reads)


@pytest.mark.parametrize("text", ["mean", "max", "min", "quantile", "quantile:0.2", "quantile:90", "quantile:1"])
def test_the_merge_kernel_scores_each_edge_as_the_reference(text):
    name, value = S.parse_score(text)
    spec = S.get_score(name)
    graph = disjoint_pairs_graph(seed=len(text))
    history = A.merge_history(graph, 1.0, name, value)
    expected = 1.0 - spec.reference(graph, value)
    assert len(history) == graph.n_edges
    np.testing.assert_allclose(np.sort(history.cost), np.sort(expected), rtol=0, atol=1e-12)
    assert history.score == spec.label(value)


def test_histogram_need_comes_from_the_statistic():
    assert [S.needs_histogram(name) for name in S.SCORES] == [False, False, False, True]
    graph = R.region_graph(np.array([[[1, 2]]], np.uint64), affinities=np.ones((3, 1, 1, 2), np.float32), bins=0)
    with pytest.raises(EmError, match="the quantile score needs a region graph with histograms"):
        A.merge_history(graph, 0.5, "quantile")
    with pytest.raises(EmError, match="unknown score 'mode'; choose one of mean, max, min, quantile"):
        A.merge_history(graph, 0.5, "mode")


def test_help_lists_every_score_and_the_cli_uses_it():
    from emtools.cli import agglomerate as cli

    text = S.score_help()
    for spec in S.REGISTRY.values():
        assert f"{spec.syntax} ({spec.help})" in text
    ctx = click.Context(cli.main)
    helps = {p.help for name in cli.main.list_commands(ctx) for p in cli.main.get_command(ctx, name).params
             if p.name == "score"}
    assert helps == {text}


def test_one_registration_adds_a_score_everywhere():
    @S.score("peak", S.MAXIMUM, "the largest, again")
    def peak(graph, value):
        return graph.maximum.astype(np.float64)

    try:
        assert S.parse_score("peak") == ("peak", S.NO_VALUE)
        assert "peak (the largest, again)" in S.score_help()
        with pytest.raises(EmError, match="choose mean, max, min, quantile\\[:Q\\] or peak"):
            S.parse_score("pea")
        graph = disjoint_pairs_graph()
        np.testing.assert_array_equal(A.merge_history(graph, 1.0, "peak").cost, A.merge_history(graph, 1.0, "max").cost)
    finally:
        del S.REGISTRY["peak"]


def test_bad_registrations_are_refused():
    with pytest.raises(ValueError, match="twice"):
        S.score("mean", S.MEAN, "again")(lambda graph, value: graph.mean)
    with pytest.raises(ValueError, match="no compiled statistic"):
        S.score("new", 99, "no kernel branch")(lambda graph, value: graph.mean)
    assert "new" not in S.REGISTRY
