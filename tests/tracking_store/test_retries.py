"""Bounded retries of a locked sqlite store: retried while SQLite says locked, never more than BUSY_RETRIES times,
and nothing else is retried."""

import sqlite3

import pytest

from gemctl import tracking_store
from gemctl.tracking_store import BUSY_RETRIES, is_busy, retrying


@pytest.fixture
def waits(monkeypatch):
    slept = []
    monkeypatch.setattr(tracking_store.time, "sleep", slept.append)
    return slept


def locked_then_ok(failures: int, error=sqlite3.OperationalError("database is locked")):
    calls = []

    def fn(x):
        calls.append(x)
        if len(calls) <= failures:
            raise error
        return x * 2

    return fn, calls


def test_a_locked_call_is_retried_until_it_goes_through(waits):
    fn, calls = locked_then_ok(3)
    assert retrying(fn)(21) == 42
    assert calls == [21] * 4 and len(waits) == 3
    assert waits[0] < waits[2]  # backing off


def test_retries_are_bounded(waits):
    fn, calls = locked_then_ok(BUSY_RETRIES + 5)
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        retrying(fn)(1)
    assert len(calls) == BUSY_RETRIES + 1 and len(waits) == BUSY_RETRIES
    assert max(waits) <= tracking_store.BACKOFF_MAX_S * 1.5


def test_other_errors_are_not_retried(waits):
    fn, calls = locked_then_ok(1, sqlite3.IntegrityError("UNIQUE constraint failed: runs.run_uuid"))
    with pytest.raises(sqlite3.IntegrityError):
        retrying(fn)(1)
    assert calls == [1] and waits == []


def test_mlflows_wrapped_lock_error_is_recognised():
    from mlflow.exceptions import MlflowException

    try:
        try:
            raise sqlite3.OperationalError("database is locked")
        except sqlite3.OperationalError as e:
            raise MlflowException("(sqlite3.OperationalError) ...", error_code="TEMPORARILY_UNAVAILABLE") from e
    except MlflowException as wrapped:
        assert is_busy(wrapped)
    assert not is_busy(MlflowException("Run 'abc' not found"))


def test_a_store_call_inside_a_retried_one_is_not_retried_again(waits):
    inner_fn, inner_calls = locked_then_ok(BUSY_RETRIES + 5)
    inner = retrying(inner_fn)
    outer_calls = []

    def outer():
        outer_calls.append(1)
        return inner(1)

    with pytest.raises(sqlite3.OperationalError):
        retrying(outer)()
    # the outer call retries; each attempt calls the inner one once: attempts add up, they do not multiply
    assert len(outer_calls) == BUSY_RETRIES + 1 and len(inner_calls) == BUSY_RETRIES + 1
