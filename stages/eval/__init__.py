"""Evaluation: benchmarks read from their published layouts (or a mapping file), prompted and parsed one documented
way each, scored with the official metric, and aggregated overall and per category. `benchmark.py` is the contract
every benchmark follows; the stage program that runs one on a checkpoint is `run.py`."""
