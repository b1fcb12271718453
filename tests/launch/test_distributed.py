"""The env:// variables of a multi-task job: rank 0's rendezvous port is the same on every rank and never in the
kernel's ephemeral range, where an outgoing connection on the node may hold it."""

import os
from unittest import mock

from hypothesis import given
from hypothesis import strategies as st

from gemctl.launch import distributed


@given(st.one_of(st.integers(1, 10**9).map(str),
                 st.tuples(st.integers(1, 10**9), st.integers(0, 10**4)).map(lambda t: f"{t[0]}_{t[1]}")))
def test_the_port_is_drawn_from_the_job_id_below_the_ephemeral_range(job_id):
    port = distributed.master_port(job_id)
    assert 20000 <= port < 32768
    assert distributed.master_port(job_id) == port


def test_export_sets_the_drawn_port_over_an_inherited_one():
    # job 1151: submitit's own draw is 54074, the port an outgoing connection held in the run that found this
    env = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "1151", "SLURM_NTASKS": "2", "SLURM_PROCID": "1",
           "SLURM_LOCALID": "1", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "vm", "SLURM_NNODES": "1",
           "MASTER_PORT": "54074"}
    # the whole environment restored after: export() adds RANK, WORLD_SIZE... which would make every later job of
    # this process's tests a 2-rank one
    before = dict(os.environ)
    with mock.patch.dict(os.environ, env):
        for k in ("MASTER_ADDR", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
            os.environ.pop(k, None)
        exported = distributed.export()
        assert exported.master_port == distributed.master_port("1151") == int(os.environ["MASTER_PORT"])
        assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["MASTER_ADDR"]) == ("1", "2", "vm")
    assert dict(os.environ) == before
