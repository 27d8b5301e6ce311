"""Head specs: the contract between em-train's checkpoints and em-predict."""

import pytest

from emtools.errors import EmError
from emtools.models.heads import (
    NEAREST_OFFSETS,
    default_heads,
    head_spec,
    heads_from_dict,
    heads_to_dict,
)


def test_affinity_head_defaults_to_the_nearest_neighbour_convention():
    head = head_spec("affinity", {"kind": "affinity", "channels": 3})
    assert head.offsets == NEAREST_OFFSETS == ((-1, 0, 0), (0, -1, 0), (0, 0, -1))
    assert head.activation == "sigmoid" and head.value_range == (0.0, 1.0)


def test_kinds_have_their_activation_and_range():
    assert head_spec("d", {"kind": "distance", "channels": 1}).value_range == (-1.0, 1.0)
    assert head_spec("s", {"kind": "semantic", "channels": 4}).activation == "softmax"


def test_round_trip_in_model_order():
    heads = [head_spec("affs", {"kind": "affinity", "offsets": [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [0, -4, 0]]}),
             head_spec("fg", {"kind": "foreground", "channels": 1})]
    assert heads[0].channels == 4
    again = heads_from_dict(heads_to_dict(heads), [("affs", 4), ("fg", 1)])
    assert again == heads
    assert [h.name for h in heads_from_dict(heads_to_dict(heads), [("fg", 1), ("affs", 4)])] == ["fg", "affs"]


def test_default_heads_from_model_head_names():
    heads = default_heads([("affinity", 3), ("foreground", 1)])
    assert [h.kind for h in heads] == ["affinity", "foreground"]


@pytest.mark.parametrize("name,values,fragment", [
    ("x", {"kind": "colour", "channels": 1}, "unknown kind"),
    ("a", {"kind": "affinity", "channels": 2, "offsets": [[-1, 0, 0]]}, "2 channels but 1"),
    ("a", {"kind": "affinity", "offsets": [[0, 0, 0]]}, "not all 0"),
    ("a", {"kind": "affinity", "offsets": [[1, 2]]}, "three integers"),
    ("f", {"kind": "foreground", "channels": 0}, "at least one channel"),
    ("s", {"kind": "semantic", "channels": 1}, "at least 2 classes"),
    ("f", "foreground", "mapping"),
])
def test_bad_head_descriptions(name, values, fragment):
    with pytest.raises(EmError, match=fragment):
        head_spec(name, values)


def test_heads_must_match_the_model():
    described = {"affinity": {"kind": "affinity", "channels": 3}}
    with pytest.raises(EmError, match="do not match"):
        heads_from_dict(described, [("foreground", 1)])
    with pytest.raises(EmError, match="the model has 4 channels"):
        heads_from_dict(described, [("affinity", 4)])
