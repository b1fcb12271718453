"""Properties of the override parser and of deep_merge, over generated inputs."""

import copy
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gem_stages.errors import InputError
from gemctl.recipe import parse_override
from gemctl.schema import deep_merge

PROPERTY = settings(settings.get_profile("gemctl-fuzz"), max_examples=300)

key_part = st.text(st.characters(blacklist_characters="=.", blacklist_categories=("Cs",)), min_size=1, max_size=8) \
    .filter(lambda p: p.strip() == p and p.strip())
dotted = st.lists(key_part, min_size=1, max_size=4).map(".".join)


@PROPERTY
@given(key=dotted, value=st.integers(min_value=-(10**30), max_value=10**30))
def test_integers_parse_as_typed(key, value):
    assert parse_override(f"{key}={value}") == (key.split("."), value)


@PROPERTY
@given(key=dotted, value=st.floats(allow_nan=False, allow_infinity=False))
def test_floats_parse_back_exactly_in_python_and_scientific_notation(key, value):
    # repr gives '1e-05', '3.5', '1e+16': YAML 1.1 alone reads the first and last as strings
    for text in (repr(value), f"{value:e}", f"{value:E}"):
        parsed = parse_override(f"{key}={text}")[1]
        assert isinstance(parsed, float) and parsed == float(text), text


@PROPERTY
@given(key=dotted, value=st.lists(st.sampled_from(["connector", "language", "front", "top"]), max_size=4))
def test_flow_lists_parse_as_lists_and_values_may_hold_equals(key, value):
    assert parse_override(f"{key}=[{','.join(value)}]") == (key.split("."), value)
    assert parse_override(f"{key}=a=b") == (key.split("."), "a=b")


@PROPERTY
@given(key=dotted, word=st.sampled_from(["true", "false", "null", "~", ""]))
def test_yaml_words_parse_as_yaml(key, word):
    assert parse_override(f"{key}={word}")[1] == {"true": True, "false": False, "null": None, "~": None, "": ""}[word]


@PROPERTY
@given(text=st.text(max_size=30))
def test_any_text_parses_or_is_refused_as_input_error(text):
    try:
        path, _ = parse_override(text)
    except InputError as e:
        assert str(e).startswith("bad override") and "\n" not in str(e)
        assert "=" not in text or any(not p.strip() for p in text.partition("=")[0].strip().split(".")) \
            or "the value is not valid YAML" in str(e)
    else:
        assert path == text.partition("=")[0].strip().split(".") and all(p.strip() for p in path)


@pytest.mark.parametrize("text", ["seed", "=1", "a..b=1", ".a=1", "a.=1", " =1", "a. .b=1"])
def test_malformed_overrides_are_refused(text):
    with pytest.raises(InputError, match="bad override"):
        parse_override(text)


settings_tree = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=4)
    | st.lists(st.integers(), max_size=3),
    lambda inner: st.dictionaries(st.sampled_from("abcde"), inner, max_size=4), max_leaves=12)
mappings = st.dictionaries(st.sampled_from("abcde"), settings_tree, max_size=4)


@PROPERTY
@given(base=mappings, over=mappings)
def test_deep_merge_over_wins_key_by_key_and_inputs_stay_untouched(base, over):
    base0, over0 = copy.deepcopy(base), copy.deepcopy(over)
    out = deep_merge(base, over)
    assert (base, over) == (base0, over0)
    assert set(out) == set(base) | set(over)
    for k, v in out.items():
        if k not in over:
            assert v == base[k]
        elif isinstance(over[k], dict) and isinstance(base.get(k), dict):
            assert v == deep_merge(base[k], over[k])
        else:
            assert v == over[k]  # lists and scalars replace whole


@PROPERTY
@given(a=mappings)
def test_deep_merge_identities(a):
    assert deep_merge(a, {}) == a and deep_merge({}, a) == a and deep_merge(a, a) == a


def test_floats_property_covers_scientific_notation():
    assert parse_override("k=3e-5")[1] == 3e-5 and parse_override("k=1E+3")[1] == 1000.0
    assert parse_override("k=.5e1")[1] == 5.0 and math.isinf(parse_override("k=.inf")[1])
