"""Progress lines for people (issue 7, point 9): the rate counts the steps this process ran, from a resumed step."""

import re

import pytest

from gem_stages.progress import RichProgress


def rates(capsys) -> list[tuple[str, float, float]]:
    err = capsys.readouterr().err
    return [(m[0], float(m[1]), float(m[2])) for m in re.findall(r"step (\d+/\d+) ([\d.]+) step/s eta (\d+)s", err)]


def test_rate_and_eta_after_a_resume_count_from_the_resumed_step(capsys):
    p = RichProgress("stage1", line_every_s=0)
    with p:
        # resumed at step 100 of 200: the trainer reports the step reached and the seconds since it resumed
        for i in range(1, 5):
            p.update(100 + i, 200, {"loss": 1.0}, 0.5 * i)
    got = rates(capsys)
    assert [(step, rate) for step, rate, _ in got] == [(f"{100 + i}/200", 2.0) for i in range(1, 5)]
    assert [eta for *_, eta in got] == pytest.approx([(100 - i) / 2 for i in range(1, 5)], abs=0.5)


def test_rate_of_a_fresh_run(capsys):
    p = RichProgress("stage1", line_every_s=0)
    with p:
        for i in range(1, 4):
            p.update(i, 10, {}, 0.25 * i)
    assert [r[1] for r in rates(capsys)] == [4.0, 4.0, 4.0]
