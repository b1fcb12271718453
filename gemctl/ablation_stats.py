"""The numbers of an ablation report: mean ± std over seeds, and the difference to the baseline with a paired
bootstrap interval.

Pairing: every variant runs with the same seeds as the baseline, and seed s of a variant starts from the same model
init, data order and noise draws as seed s of the baseline, and is scored on the same held-out items. So the unit of
comparison is the per-seed difference d_s = variant_s - baseline_s; the bootstrap resamples SEEDS with replacement
(the d_s together, never a variant's and the baseline's scores independently) and takes the mean of each resample.
The interval is the 2.5th and 97.5th percentile of those means (numpy's linear interpolation).

Items are not resampled: each seed's score is already a mean over the same fixed held-out items for every variant,
and a benchmark's overall score follows its own rule over categories (e.g. a mean of per-category means), which a
per-item resample would have to re-apply benchmark by benchmark. With few seeds the interval is coarse (3 seeds
give only 10 distinct resamples), and it says so: a zero-width interval from one seed is no evidence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # fixed: the same scores always give the same interval (a re-run prints the same table)
LEVEL = 0.95


@dataclass(frozen=True)
class Spread:
    mean: float
    std: float  # sample standard deviation over seeds (ddof=1); 0 for a single seed
    n: int  # seeds


@dataclass(frozen=True)
class Difference:
    mean: float  # mean over seeds of variant - baseline
    low: float  # bootstrap interval, LEVEL
    high: float
    n: int  # paired seeds

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def spread(values: list[float]) -> Spread:
    x = np.asarray(values, dtype=float)
    return Spread(float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0, len(x))


def paired_bootstrap(baseline: dict[int, float], variant: dict[int, float], *, resamples: int = RESAMPLES,
                     seed: int = BOOTSTRAP_SEED, level: float = LEVEL) -> Difference:
    """Difference variant - baseline over the seeds both have, with its paired bootstrap interval (module doc)."""
    seeds = sorted(baseline.keys() & variant.keys())
    if not seeds:
        raise ValueError("no seed scored for both the variant and the baseline")
    d = np.array([variant[s] - baseline[s] for s in seeds], dtype=float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Difference(float(d.mean()), float(low), float(high), len(d))
