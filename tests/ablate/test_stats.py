"""The ablation report's statistics against cases worked out by hand."""

import numpy as np
import pytest

from gemctl.ablation_stats import paired_bootstrap, spread


def test_two_seeds_differences_1_and_3_give_the_interval_1_to_3():
    # resampling 2 paired differences {1, 3}: means 1 (p 1/4), 2 (p 1/2), 3 (p 1/4); 2.5% and 97.5% fall in the
    # outer quarters, so the interval is exactly [1, 3] around the mean difference 2
    d = paired_bootstrap({0: 0.5, 1: 0.5}, {0: 1.5, 1: 3.5})
    assert (d.mean, d.low, d.high, d.n) == (2.0, 1.0, 3.0, 2)


def test_three_seeds_with_one_outlier():
    # differences {0, 0, 3}: resample means k (k = how many 3s drawn) with p 8/27, 12/27, 6/27, 1/27; P(0) > 2.5%
    # and P(3) = 1/27 > 2.5%, so the interval is [0, 3] around the mean difference 1
    d = paired_bootstrap({0: 1.0, 1: 2.0, 2: 3.0}, {0: 1.0, 1: 2.0, 2: 6.0})
    assert (d.mean, d.low, d.high) == (1.0, 0.0, 3.0)
    assert not d.excludes_zero


def test_pairing_by_seed_removes_the_seed_to_seed_spread():
    # the baseline varies a lot across seeds, the variant is always exactly 1 better: paired, the interval is [1, 1]
    d = paired_bootstrap({0: 10.0, 1: 20.0, 2: 40.0}, {0: 11.0, 1: 21.0, 2: 41.0})
    assert (d.low, d.high) == (1.0, 1.0) and d.excludes_zero


def test_the_interval_is_numpys_percentile_of_the_explicit_resample():
    base = {s: float(v) for s, v in enumerate([0.31, 0.42, 0.28, 0.35, 0.40])}
    var = {s: float(v) for s, v in enumerate([0.36, 0.41, 0.33, 0.45, 0.43])}
    d = np.array([var[s] - base[s] for s in range(5)])
    rng = np.random.default_rng(7)
    idx = rng.integers(0, 5, size=(2000, 5))
    means = np.array([sum(d[i] for i in row) / 5 for row in idx])  # one resample at a time
    low, high = np.percentile(means, [2.5, 97.5])
    got = paired_bootstrap(base, var, resamples=2000, seed=7)
    assert got.low == pytest.approx(low, abs=1e-12) and got.high == pytest.approx(high, abs=1e-12)
    assert got.mean == pytest.approx(0.044)
    # a fixed bootstrap seed: the same scores give the same interval
    assert paired_bootstrap(base, var) == paired_bootstrap(base, var)


def test_only_seeds_both_have_are_paired_and_none_is_refused():
    assert paired_bootstrap({0: 1.0, 1: 1.0}, {1: 2.0, 2: 9.0}).n == 1
    with pytest.raises(ValueError, match="no seed"):
        paired_bootstrap({0: 1.0}, {1: 1.0})


def test_spread_is_the_sample_std():
    s = spread([1.0, 2.0, 3.0, 4.0])
    assert s.mean == 2.5 and s.std == pytest.approx(np.sqrt(5 / 3)) and s.n == 4
    assert spread([0.7]).std == 0.0


def test_report_files_hold_the_table_and_only_current_plots(tmp_path):
    from gemctl.ablation_report import table, write

    scores = {"qa": {"gem": {0: 0.5, 1: 0.7}, "rgb": {0: 0.4, 1: 0.5}}}
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "gone.svg").write_text("<svg/>")
    rows = table(scores, ["gem", "rgb"], "gem")
    assert [(r["variant"], r["diff"]) for r in rows] == [("gem", None), ("rgb", pytest.approx(-0.15))]
    write(tmp_path, "t", "d", rows, scores, [], "gem", 2)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["qa.svg"]
    md = (tmp_path / "report.md").read_text()
    assert "| qa | rgb | 0.4500 ± 0.0707 | 2 | -0.1500 | [-0.2000, -0.1000] |" in md
