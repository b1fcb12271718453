"""16 jobs of an array log to one sqlite store at once: every run, param, tag and metric point arrives."""

import pytest

from .writers import JOBS, assert_nothing_lost, run_writers


@pytest.mark.slow
def test_sixteen_writer_processes_lose_nothing_in_one_sqlite_store(tmp_path):
    # a fresh store: the jobs also race to create its tables (before retries and the file lock: 15 of 16 failed)
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    failures, retried = run_writers(uri, tmp_path, JOBS)
    assert failures == []
    assert_nothing_lost(uri, JOBS)
    print(f"{JOBS} writers: {retried} store call(s) retried while the database was locked")
