"""The value-conversion layer: every converter on hand-checked good values, each bad value with its
exact message in each wording, and the edges (empty, whitespace, negative, 0, nan, a bool given as
a number, one number for a triple, four values, both triple spellings)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from emtools import values as v
from emtools.errors import EmError


def error(convert, *args, **kwargs) -> str:
    with pytest.raises(EmError) as info:
        convert(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_the_module_loads_no_click_numpy_or_torch():
    code = "import sys, emtools.values; print(sorted({'click', 'numpy', 'torch'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_every_wording_words_every_problem():
    assert set(v.SETTINGS.templates) == set(v.CLICK.templates) == set(v.OPTIONS.templates)


# ----------------------------------------------------------------------------- did you mean

def test_closest_name_and_the_hints():
    assert v.closest_name("adan", ["adam", "sgd"]) == "adam"
    assert v.closest_name("zzz", ["adam", "sgd"]) is None
    assert v.did_you_mean("adan", ["adam", "sgd"]) == "; did you mean 'adam'?"
    assert v.did_you_mean("zzz", ["adam", "sgd"]) == "; choose from adam, sgd"
    assert v.did_you_mean("zzz", ["adam"], otherwise="") == ""
    assert v.did_you_mean("rotat", ["rotate"], form=" (did you mean {}?)") == " (did you mean rotate?)"
    assert v.hint(None, ["a", "b"], otherwise="; valid keys here: {choices}") == "; valid keys here: a, b"
    assert v.hint("a.b", ["a.b"]) == "; did you mean 'a.b'?"
    assert str(v.unknown_choice("score", "maen", ["mean", "max"])) == "unknown score 'maen'; did you mean 'mean'?"
    assert str(v.unknown_choice("score", "zz", ["mean", "max"])) == "unknown score 'zz'; choose from mean, max"
    assert v.OPTIONS.suggest("angle", ["angle_deg", "step_deg"]) == " (did you mean angle_deg?)"
    assert v.OPTIONS.suggest("zzz", ["angle_deg"]) == ""


# ----------------------------------------------------------------------------- scalars

@pytest.mark.parametrize("given,expected", [
    ("160", 160), (" 160 ", 160), ("-3", -3), ("0", 0), (160, 160), (2.0, 2), (np.int64(5), 5), (np.float32(4.0), 4),
])
def test_to_int(given, expected):
    out = v.to_int(given, "k")
    assert out == expected and type(out) is int


@pytest.mark.parametrize("given,message", [
    ("ten", "train.steps='ten' is not an integer"),
    ("1.5", "train.steps='1.5' is not an integer"),
    ("", "train.steps='' is not an integer"),
    ("   ", "train.steps='   ' is not an integer"),
    (True, "train.steps=True is not an integer"),
    (2.5, "train.steps=2.5 is not an integer"),
    (float("nan"), "train.steps=nan is not a finite number"),
    (None, "train.steps=None is not an integer"),
    ([1], "train.steps=[1] is not an integer"),
])
def test_to_int_refuses(given, message):
    assert error(v.to_int, given, "train.steps") == message


def test_a_numpy_bool_is_no_number():
    assert error(v.to_int, np.bool_(False), "k").endswith(" is not an integer")
    assert error(v.to_float, np.bool_(True), "k").endswith(" is not a number")


def test_to_int_bounds_and_option_wording():
    assert v.to_int("1", "train.steps", lo=1) == 1 and v.to_int(9, "n", hi=9) == 9
    assert error(v.to_int, "0", "train.steps", lo=1) == "train.steps='0' must be at least 1"
    assert error(v.to_int, -1, "k", lo=0) == "k=-1 must be at least 0"
    assert error(v.to_int, 10, "k", hi=9) == "k=10 must be at most 9"
    options = {"text": False, "say": v.OPTIONS}
    assert v.to_int(3.0, "a.count", **options) == 3
    assert error(v.to_int, "3", "a.count", **options) == "a.count must be a number, got '3'"
    assert error(v.to_int, True, "a.count", **options) == "a.count must be a number, got True"
    assert error(v.to_int, 1.5, "a.count", **options) == "a.count must be a whole number, got 1.5"
    assert error(v.to_int, float("inf"), "a.count", **options) == "a.count must be finite, got inf"
    assert error(v.to_int, 0, "a.count", lo=1, **options) == "a.count must be >= 1, got 0"
    assert error(v.to_int, 5, "a.count", hi=4, **options) == "a.count must be <= 4, got 5"


@pytest.mark.parametrize("given,expected", [
    ("1e-3", 1e-3), (" 0.5 ", 0.5), ("-2", -2.0), ("0", 0.0), (3, 3.0), (np.float32(0.25), 0.25),
])
def test_to_float(given, expected):
    out = v.to_float(given, "k")
    assert out == expected and type(out) is float


@pytest.mark.parametrize("given,kwargs,message", [
    ("fast", {}, "optim.lr='fast' is not a number"),
    ("", {}, "optim.lr='' is not a number"),
    (True, {}, "optim.lr=True is not a number"),
    ("nan", {}, "optim.lr='nan' is not a finite number"),
    ("-inf", {}, "optim.lr='-inf' is not a finite number"),
    (float("nan"), {}, "optim.lr=nan is not a finite number"),
    ("-1", {"lo": 0}, "optim.lr='-1' must be at least 0"),
    ("0", {"lo": 0, "open_lo": True}, "optim.lr='0' must be positive"),
    ("-0.5", {"lo": 0, "open_lo": True}, "optim.lr='-0.5' must be positive"),
    ("1", {"lo": 1, "open_lo": True}, "optim.lr='1' must be above 1"),
    ("2", {"hi": 1}, "optim.lr='2' must be at most 1"),
    ("1", {"hi": 1, "open_hi": True}, "optim.lr='1' must be below 1"),
])
def test_to_float_refuses(given, kwargs, message):
    assert error(v.to_float, given, "optim.lr", **kwargs) == message


def test_to_float_option_wording():
    options = {"text": False, "say": v.OPTIONS}
    assert error(v.to_float, "0.1", "elastic.sigma", **options) == "elastic.sigma must be a number, got '0.1'"
    assert error(v.to_float, 0.1, "elastic.sigma", lo=0.5, **options) == "elastic.sigma must be >= 0.5, got 0.1"
    assert error(v.to_float, 0.0, "a.b", lo=0, open_lo=True, **options) == "a.b must be positive, got 0"
    assert error(v.to_float, 0.5, "a.b", lo=0.5, open_lo=True, **options) == "a.b must be > 0.5, got 0.5"
    assert error(v.to_float, 1.0, "a.b", hi=1, open_hi=True, **options) == "a.b must be < 1, got 1"
    assert error(v.to_float, float("nan"), "grayscale.invert_p", **options) == \
        "grayscale.invert_p must be finite, got nan"


@pytest.mark.parametrize("given,expected", [
    ("true", True), ("Yes", True), (" on ", True), ("1", True), (1, True), (True, True), (np.bool_(True), True),
    ("false", False), ("NO", False), ("off", False), ("0", False), (0, False), (False, False),
])
def test_to_bool(given, expected):
    assert v.to_bool(given, "k") is expected


def test_to_bool_refuses():
    assert error(v.to_bool, "maybe", "residual") == "residual='maybe' is not true/false"
    assert error(v.to_bool, "", "residual") == "residual='' is not true/false"
    assert error(v.to_bool, 2, "residual") == "residual=2 is not true/false"
    assert error(v.to_bool, 1.0, "residual") == "residual=1.0 is not true/false"
    # library options take real bools only: 'yes' and 1 are refused there
    assert v.to_bool(np.bool_(False), "flip.transpose", text=False, say=v.OPTIONS) is False
    assert error(v.to_bool, "yes", "flip.transpose", text=False, say=v.OPTIONS) == \
        "flip.transpose must be true or false, got 'yes'"
    assert error(v.to_bool, 1, "flip.transpose", text=False, say=v.OPTIONS) == \
        "flip.transpose must be true or false, got 1"


def test_to_fraction():
    assert v.to_fraction("0.5", "f") == 0.5 and v.to_fraction(0, "f") == 0.0 and v.to_fraction(1, "f") == 1.0
    assert error(v.to_fraction, "1.5", "f") == "f='1.5' must lie in [0, 1]"
    assert error(v.to_fraction, "-0.1", "f") == "f='-0.1' must lie in [0, 1]"
    assert error(v.to_fraction, "nan", "f") == "f='nan' is not a finite number"
    assert error(v.to_fraction, "", "f") == "f='' is not a number"
    assert error(v.to_fraction, 0, "q", open_lo=True) == "q=0 must lie in (0, 1]"
    # percent: a number above 1, or text ending in %
    assert v.to_fraction("50", "q", percent=True) == 0.5 and v.to_fraction(" 50% ", "q", percent=True) == 0.5
    assert v.to_fraction("100", "q", percent=True) == 1.0 and v.to_fraction("0.5", "q", percent=True) == 0.5
    assert v.to_fraction("1", "q", percent=True) == 1.0  # 1 is the whole, not 1 %
    assert error(v.to_fraction, "150%", "q", percent=True) == "q='150%' must lie in [0, 1] (or percent)"
    assert error(v.to_fraction, "200", "q", percent=True, open_lo=True) == "q='200' must lie in (0, 1] (or percent)"
    assert error(v.to_fraction, "50%", "q") == "q='50%' is not a number"  # percent only where accepted
    assert error(v.to_fraction, 1.5, "a.p", text=False, say=v.OPTIONS) == "a.p must be in [0, 1], got 1.5"


def test_text_and_axes():
    assert v.to_text("abc", "a.key") == "abc"
    assert error(v.to_text, 3, "a.key") == "a.key must be text, got 3"
    assert v.to_axes("zyx", "flip.axes") == "zyx" and v.to_axes("", "flip.axes") == ""
    assert error(v.to_axes, "zq", "flip.axes") == "flip.axes must be letters of z, y, x (e.g. zyx or yx), got 'zq'"
    assert error(v.to_axes, 1, "flip.axes") == "flip.axes must be letters of z, y, x (e.g. zyx or yx), got 1"
    assert error(v.to_axes, "q", "axes", say=v.SETTINGS) == "axes='q' is not letters of z, y, x (e.g. zyx or yx)"


def test_none_and_optional():
    for word in (None, "", "  ", "none", "None", "NULL", "~"):
        assert v.is_none(word)
    for word in (0, "0", "nan", [], "auto"):
        assert not v.is_none(word)
    assert v.optional(v.to_int, "none", "train.threads") is None
    assert v.optional(v.to_int, "4", "train.threads", lo=1) == 4
    assert error(v.optional, v.to_int, "0", "train.threads", lo=1) == "train.threads='0' must be at least 1"


# ----------------------------------------------------------------------------- choices

CHOICES = ("adam", "adamw", "sgd")


def test_to_choice():
    assert v.to_choice(" Adam ", "optim.name", CHOICES) == "adam"
    assert v.to_choice(True, "train.deterministic", ("auto", "true", "false")) == "true"
    assert v.to_choice("BN", "norm", ("batch", "group"), aliases={"bn": "batch"}) == "batch"
    assert error(v.to_choice, "adan", "optim.name", CHOICES) == "optim.name='adan' is unknown; did you mean 'adam'?"
    assert error(v.to_choice, "zzz", "optim.name", CHOICES) == "optim.name='zzz' is unknown; choose from adam, adamw, sgd"
    assert error(v.to_choice, "", "optim.name", CHOICES) == "optim.name='' is unknown; choose from adam, adamw, sgd"
    assert error(v.to_choice, 3, "optim.name", CHOICES) == "optim.name=3 is unknown; choose from adam, adamw, sgd"


def test_to_choice_as_given_and_on_the_command_line():
    options = {"fold_case": False, "say": v.OPTIONS}
    assert v.to_choice("3d", "elastic.mode", ("2d", "3d"), **options) == "3d"
    assert error(v.to_choice, "3D", "elastic.mode", ("2d", "3d"), **options) == \
        "elastic.mode must be one of 2d, 3d, got '3D' (did you mean 3d?)"
    assert error(v.to_choice, "zz", "elastic.mode", ("2d", "3d"), **options) == \
        "elastic.mode must be one of 2d, 3d, got 'zz'"
    assert error(v.to_choice, ["2d"], "elastic.mode", ("2d", "3d"), **options) == \
        "elastic.mode must be one of 2d, 3d, got ['2d'] (did you mean 2d?)"
    assert error(v.to_choice, "medain", "", ("mean", "median"), say=v.CLICK) == \
        "'medain' is not one of mean, median; did you mean 'median'?"
    assert error(v.to_choice, "zz", "", ("mean", "median"), say=v.CLICK) == "'zz' is not one of mean, median"


# ----------------------------------------------------------------------------- triples

@pytest.mark.parametrize("given,expected", [
    ("18,160,160", (18, 160, 160)),
    (" 18 , 160 , 160 ", (18, 160, 160)),
    ("[18, 160, 160]", (18, 160, 160)),
    ([18, 160, 160], (18, 160, 160)),
    (("18", "160", "160"), (18, 160, 160)),
    ("64", (64, 64, 64)),          # one number: all three axes
    (64, (64, 64, 64)),
    ([18], (18, 18, 18)),
    ("18x160x160", (18, 160, 160)),  # the model specs' older spelling, where allowed
])
def test_to_triple(given, expected):
    out = v.to_triple(given, "data.patch_zyx", allow_x=True)
    assert out == expected and all(type(n) is int for n in out)


@pytest.mark.parametrize("given,kwargs,message", [
    ("1,2", {}, "data.patch_zyx='1,2' is not a z,y,x triple (e.g. 18,160,160)"),
    ("1,2,3,4", {}, "data.patch_zyx='1,2,3,4' is not a z,y,x triple (e.g. 18,160,160)"),
    ("", {}, "data.patch_zyx='' is not a z,y,x triple (e.g. 18,160,160)"),
    ("  ", {}, "data.patch_zyx='  ' is not a z,y,x triple (e.g. 18,160,160)"),
    ([], {}, "data.patch_zyx=[] is not a z,y,x triple (e.g. 18,160,160)"),
    ("1,2", {"single": False, "example": "1,3,3"}, "data.patch_zyx='1,2' is not a z,y,x triple (e.g. 1,3,3)"),
    ("5", {"single": False}, "data.patch_zyx='5' is not a z,y,x triple (e.g. 18,160,160)"),
    ("0,160,160", {}, "data.patch_zyx='0,160,160' must be positive"),
    ("18,-1,160", {}, "data.patch_zyx='18,-1,160' must be positive"),
    ("18,a,160", {}, "data.patch_zyx='a' is not an integer"),
    ("18,,160", {}, "data.patch_zyx='' is not an integer"),
    ("18,1.5,160", {}, "data.patch_zyx='1.5' is not an integer"),
    ([True, 1, 1], {}, "data.patch_zyx=True is not an integer"),
    ("18x160x160", {}, "data.patch_zyx='18x160x160' is not an integer"),  # x only where allowed
    ("1x3,3", {"allow_x": True}, "data.patch_zyx='1x3' is not an integer"),  # one spelling at a time
])
def test_to_triple_refuses(given, kwargs, message):
    assert error(v.to_triple, given, "data.patch_zyx", **kwargs) == message


def test_float_triples():
    assert v.to_triple("40,4,4", "voxel_size_nm", integer=False) == (40.0, 4.0, 4.0)
    assert v.to_triple("2.5", "voxel_size_nm", integer=False) == (2.5, 2.5, 2.5)
    assert v.to_triple("-1,0,0.5", "offset_nm", integer=False, positive=False) == (-1.0, 0.0, 0.5)
    assert error(v.to_triple, "40,4", "voxel_size_nm", integer=False) == \
        "voxel_size_nm='40,4' is not a z,y,x triple (e.g. 40,4,4)"
    assert error(v.to_triple, "nan,4,4", "voxel_size_nm", integer=False) == "voxel_size_nm='nan' is not a finite number"
    assert error(v.to_triple, "40,0,4", "voxel_size_nm", integer=False) == "voxel_size_nm='40,0,4' must be positive"


def test_triples_in_click_wording_name_the_whole_value():
    ints = {"positive": False, "example": "64,512,512", "say": v.CLICK}
    assert v.to_triple("0,-4,4", "", **ints) == (0, -4, 4)  # ranges are the command's business
    assert error(v.to_triple, "2,4", "", **ints) == "'2,4' has 2 values; expected z,y,x (e.g. 64,512,512)"
    assert error(v.to_triple, "1,2,3,4", "", **ints) == "'1,2,3,4' has 4 values; expected z,y,x (e.g. 64,512,512)"
    assert error(v.to_triple, "a,b,c", "", **ints) == \
        "'a,b,c' is not three comma-separated integers z,y,x (e.g. 64,512,512)"
    assert error(v.to_triple, "", "", **ints) == "'' is not three comma-separated integers z,y,x (e.g. 64,512,512)"
    assert error(v.to_triple, "1x3x3", "", **ints) == \
        "'1x3x3' is not three comma-separated integers z,y,x (e.g. 64,512,512)"
    assert error(v.to_triple, "nan,4,4", "", integer=False, positive=False, example="40,4,4", say=v.CLICK) == \
        "'nan,4,4' is not three comma-separated numbers z,y,x (e.g. 40,4,4)"


@pytest.mark.parametrize("given,expected", [
    ("[[1,2,2],[2,2,2]]", ((1, 2, 2), (2, 2, 2))),
    ("[ [1, 2, 2], [2, 2, 2] ]", ((1, 2, 2), (2, 2, 2))),
    ("1x2x2,2x2x2", ((1, 2, 2), (2, 2, 2))),   # the older spelling
    ([[1, 3, 3], [3, 3, 3]], ((1, 3, 3), (3, 3, 3))),
    (["1x3x3", "3,3,3"], ((1, 3, 3), (3, 3, 3))),
    ("1,3,3", ((1, 3, 3),)),    # one triple (for every level)
    ("[1,3,3]", ((1, 3, 3),)),
    ([1, 3, 3], ((1, 3, 3),)),
    ("3", ((3, 3, 3),)),
    (3, ((3, 3, 3),)),
])
def test_to_triples(given, expected):
    assert v.to_triples(given, "pools") == expected


@pytest.mark.parametrize("given,message", [
    ("1x2", "pools='1x2' is not a z,y,x triple (e.g. 1,3,3)"),
    ("[[1,2,2],[2,2]]", "pools='2,2' is not a z,y,x triple (e.g. 1,3,3)"),
    ("[[1,2,2],x]", "pools='[[1,2,2],x]' is not a z,y,x triple (e.g. [[1,3,3],[1,3,3]])"),
    ("[[1,2,2],[2,2,2]", "pools='[[1,2,2],[2,2,2]' is not a z,y,x triple (e.g. [[1,3,3],[1,3,3]])"),
    ("1x2x0", "pools='1x2x0' must be positive"),
])
def test_to_triples_refuses(given, message):
    assert error(v.to_triples, given, "pools") == message


def test_format_triple_prints_commas():
    assert v.format_triple((1, 3, 3)) == "1,3,3"
    assert v.format_triple((40.0, 4.0, 4.0)) == "40,4,4" and v.format_triple((0.5, 4, 4)) == "0.5,4,4"


# ----------------------------------------------------------------------------- lists and ranges

def test_to_numbers():
    assert v.to_numbers("0.3,0.5,0.7", "t") == [0.3, 0.5, 0.7]
    assert v.to_numbers("[0.3, 0.5]", "t") == [0.3, 0.5] and v.to_numbers(0.4, "t") == [0.4]
    assert v.to_numbers([1, "2"], "t") == [1.0, 2.0]
    assert v.to_numbers("8,16", "widths", integer=True) == [8, 16]
    assert error(v.to_numbers, "", "validation.thresholds") == "validation.thresholds needs at least one number"
    assert error(v.to_numbers, [], "validation.thresholds") == "validation.thresholds needs at least one number"
    assert error(v.to_numbers, "0.3,,0.5", "t") == "t='' is not a number"
    assert error(v.to_numbers, "0.3,nan", "t") == "t='nan' is not a finite number"
    assert error(v.to_numbers, "8,x", "widths", integer=True) == "widths='x' is not an integer"


@pytest.mark.parametrize("given,kwargs,expected", [
    (3, {}, (3.0, 3.0)),            # one number: that fixed value
    ((1, 2), {}, (1.0, 2.0)),
    ([-30, 30], {}, (-30.0, 30.0)),
    ((2, 2), {"integer": True}, (2, 2)),
    ((1.0, 3.0), {"integer": True}, (1, 3)),
    ((0, 5), {"lo": 0, "hi": 5}, (0.0, 5.0)),
    ("-30,30", {"text": True}, (-30.0, 30.0)),
    ("5", {"text": True, "integer": True}, (5, 5)),
])
def test_to_range(given, kwargs, expected):
    out = v.to_range(given, "r", **kwargs)
    assert out == expected and all(type(n) is (int if kwargs.get("integer") else float) for n in out)


@pytest.mark.parametrize("given,kwargs,message", [
    ((30, 10), {}, "rotate.angle_deg: lo 30 is above hi 10"),
    ("x", {}, "rotate.angle_deg must be a pair of numbers lo,hi (or one number), got 'x'"),
    ("-30,30", {}, "rotate.angle_deg must be a pair of numbers lo,hi (or one number), got '-30,30'"),
    ((1, 2, 3), {}, "rotate.angle_deg must be a pair of numbers lo,hi (or one number), got (1, 2, 3)"),
    (True, {}, "rotate.angle_deg must be a pair of numbers lo,hi (or one number), got True"),
    ((True, 1), {}, "rotate.angle_deg must be a number, got True"),
    ((0, float("nan")), {}, "rotate.angle_deg must be finite, got nan"),
    ((1.5, 2), {"integer": True}, "rotate.angle_deg must be a whole number, got 1.5"),
    ((-1, 2), {"lo": 0}, "rotate.angle_deg must be >= 0, got -1"),
    ((1, 9), {"hi": 5}, "rotate.angle_deg must be <= 5, got 9"),
    ("30,10", {"text": True, "say": v.SETTINGS}, "rotate.angle_deg='30,10': lo 30 is above hi 10"),
    ("", {"text": True, "say": v.SETTINGS}, "rotate.angle_deg='' is not a pair lo,hi (or one number)"),
    ("1,2,3", {"text": True, "say": v.SETTINGS}, "rotate.angle_deg='1,2,3' is not a pair lo,hi (or one number)"),
])
def test_to_range_refuses(given, kwargs, message):
    assert error(v.to_range, given, "rotate.angle_deg", **kwargs) == message


# ----------------------------------------------------------------------------- the click adapter

def test_click_types_are_usage_errors_with_exit_2():
    import click
    from click.testing import CliRunner

    from emtools.cli.common import FLOAT_TRIPLE, INT_TRIPLE, ValueType

    fraction = ValueType("Q", lambda text: v.to_fraction(text, percent=True, say=v.CLICK))

    @click.command()
    @click.option("--chunk", type=INT_TRIPLE, default="0")
    @click.option("--voxel-size", type=FLOAT_TRIPLE, default=(40.0, 4.0, 4.0))
    @click.option("--q", type=fraction, default="50%")
    def tool(chunk, voxel_size, q):
        click.echo(f"{chunk} {voxel_size} {q}")

    runner = CliRunner()
    done = runner.invoke(tool, [])
    assert done.exit_code == 0 and done.output == "(0, 0, 0) (40.0, 4.0, 4.0) 0.5\n"
    done = runner.invoke(tool, ["--chunk", "64", "--voxel-size", "30,6,6", "--q", "0.25"])
    assert done.exit_code == 0 and done.output == "(64, 64, 64) (30.0, 6.0, 6.0) 0.25\n"
    for args, message in [
        (["--chunk", "2,4"], "Invalid value for '--chunk': '2,4' has 2 values; expected z,y,x (e.g. 64,512,512)"),
        (["--chunk", "1x3x3"], "'1x3x3' is not three comma-separated integers z,y,x (e.g. 64,512,512)"),
        (["--voxel-size", "a,4,4"], "'a,4,4' is not three comma-separated numbers z,y,x (e.g. 40,4,4)"),
        (["--q", "150"], "Invalid value for '--q': '150' must lie in [0, 1] (or percent)"),
    ]:
        done = runner.invoke(tool, args)
        assert done.exit_code == 2 and message in done.output, done.output
    assert "--chunk Z,Y,X" in runner.invoke(tool, ["--help"]).output
