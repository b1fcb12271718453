"""The --where language of `gemctl runs`: what it means on rows, that any text either parses or is refused with
its one-line error, and that a query's canonical text parses back to the same query."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gemctl.run_query import And, Compare, Not, Or, QueryError, keys, matches, parse

ROW = {"metrics": {"vsi": 0.42, "gem-synth-qa/accuracy": 0.25}, "params": {"stages.stage3.lr": "1e-05", "seed": "0",
       "model.kind": "flow"}, "tags": {"gemctl.stage": "stage3"}, "attributes": {"status": "FINISHED"}}


@pytest.mark.parametrize("text, expected", [
    ("metrics.vsi > 0.3 and params.stages.stage3.lr = 1e-5", True),  # "1e-05" and 1e-5 compare as numbers
    ("metrics.vsi > 0.5 or params.stages.stage3.lr = 1e-5", True),
    ("metrics.vsi > 0.5 or params.stages.stage3.lr = 1e-5 and seed = 1".replace("seed", "params.seed"), False),
    ("not metrics.vsi > 0.5", True),
    ("not (metrics.vsi > 0.3 and params.seed = 0)", False),
    ("metrics.`gem-synth-qa/accuracy` >= 0.25", True),
    ("metric.`gem-synth-qa/accuracy` < 0.25", False),
    ("params.model.kind = flow", True),
    ("params.model.kind = 'flow' and tags.gemctl.stage != stage2", True),
    ("attributes.status = \"FINISHED\"", True),
    ("metrics.missing < 1 or metrics.missing >= 1", False),  # a key the run lacks makes a comparison false
    ("params.model.kind > 'a'", True),  # text compares as text
    ("METRICS.vsi == 0.42 AND NOT params.seed != 0", True),
])
def test_meaning(text, expected):
    assert matches(parse(text), ROW) is expected


def test_precedence_and_keys():
    q = parse("metrics.a = 1 or metrics.b = 2 and not metrics.c = 3")
    assert q == Or(Compare("metrics", "a", "=", 1.0),
                   And(Compare("metrics", "b", "=", 2.0), Not(Compare("metrics", "c", "=", 3.0))))
    assert keys(q) == {("metrics", "a"), ("metrics", "b"), ("metrics", "c")}
    assert str(q) == "metrics.a = 1.0 or metrics.b = 2.0 and not metrics.c = 3.0"
    assert str(parse("(metrics.a = 1 or metrics.b = 2) and metrics.c = 3")) == \
        "(metrics.a = 1.0 or metrics.b = 2.0) and metrics.c = 3.0"


@pytest.mark.parametrize("text, where", [
    ("", "it is empty"), ("metrics.x >", "character 12"), ("metrics.x > 1 and", "expected a key"),
    ("(metrics.x > 1", "'(' is not closed"), ("vsi > 0.3", "expected a key"), ("metrics.x ~ 1", "operator"),
    ("metrics.x = 'open", "quote is not closed"), ("metrics.x = 1 metrics.y = 2", "unexpected"),
    ("metrics.x = 1\nor", "\\n"), ("(" * 5000 + "metrics.x = 1" + ")" * 5000, "nests too deeply"),
])
def test_refusals_are_one_line(text, where):
    with pytest.raises(QueryError) as e:
        parse(text)
    message = str(e.value)
    assert where in message and "\n" not in message and message.startswith("--where ")


# --- properties --------------------------------------------------------------------------------------------------
names = st.one_of(st.from_regex(r"[A-Za-z0-9_\-]{1,8}(\.[A-Za-z0-9_\-]{1,8}){0,2}", fullmatch=True),
                  st.text(max_size=12))  # any text: written `backquoted`
values = st.one_of(st.floats(allow_nan=False), st.text(max_size=12))
compares = st.builds(Compare, st.sampled_from(["metrics", "params", "tags", "attributes"]), names,
                     st.sampled_from(["=", "!=", "<", "<=", ">", ">="]), values)
queries = st.recursive(compares, lambda sub: st.one_of(st.builds(Not, sub), st.builds(And, sub, sub),
                                                       st.builds(Or, sub, sub)), max_leaves=8)


@settings(max_examples=400, deadline=None)
@given(queries)
def test_round_trip(q):
    assert parse(str(q)) == q


@settings(max_examples=1500, deadline=None)
@given(st.one_of(st.text(max_size=60), st.text(alphabet="metrics.params`'\"()<>=! andortx0123456789e-+", max_size=60)))
def test_any_text_parses_or_is_refused_in_one_line(text):
    try:
        q = parse(text)
    except QueryError as e:
        assert "\n" not in str(e) and str(e).startswith("--where ")
        return
    assert parse(str(q)) == q  # what parses has a canonical text that parses to it again
    matches(q, ROW)  # and evaluates on any row without raising


def test_numbers_compare_as_numbers():
    assert matches(parse("params.stages.stage3.lr < 2e-5"), ROW)
    assert not matches(parse("metrics.vsi = nan"), ROW) and math.isnan(parse("metrics.vsi = nan").value)
