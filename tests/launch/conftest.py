"""Launch tests run against a real single-node SLURM (the session fixture `slurm_cluster` in tests/conftest.py)."""

import cloudpickle

from tests.conftest import ROOT, TEST_PREFIX  # noqa: F401  (re-exported for the launch tests)
from tests.launch import jobfns

cloudpickle.register_pickle_by_value(jobfns)
