"""Dataset-name sampling suffixes: "gem%50" means "use 50% of set gem", as in the reference data list.

The kept samples are a seeded choice, so the same (seed, name, size) always keeps the same lines; prepare and the
reader both call `select_indices`, so the manifest need not store millions of line numbers.
"""

import re
import zlib

import numpy as np

from ..errors import InputError

_SUFFIX = re.compile(r"%(\d+)$")


def parse_set_name(name: str) -> tuple[str, int]:
    """'gem%50' -> ('gem', 50); 'gem' -> ('gem', 100). InputError for a malformed suffix or an empty name."""
    match = _SUFFIX.search(name)
    base = name[: match.start()] if match else name
    if "%" in base or not base:
        raise InputError(
            f"annotation set name '{name}' is malformed: use a name with an optional %NN suffix, e.g. 'gem%50'"
        )
    rate = int(match.group(1)) if match else 100
    if not 1 <= rate <= 100:
        raise InputError(f"annotation set '{name}' asks for {rate}% of its samples: use a rate from 1 to 100")
    return base, rate


def select_indices(num_samples: int, rate: int, seed: int, base_name: str) -> np.ndarray:
    """Sorted indices of the kept samples: floor(num_samples * rate / 100) of them, as the reference keeps."""
    if rate >= 100:
        return np.arange(num_samples)
    keep = num_samples * rate // 100
    # The set's name, not its position in the list, seeds the choice: reordering sets changes nothing.
    rng = np.random.default_rng([seed, zlib.crc32(base_name.encode())])
    return np.sort(rng.permutation(num_samples)[:keep])


def weighted_indices(num_samples: int, weight: float, seed: int, base_name: str) -> np.ndarray:
    """A set's mixture weight as repetition: every sample int(weight) times, then a seeded, sorted choice of
    floor(num_samples * fractional part) more (weight 2.5 lists each sample twice and half of them a third time)."""
    whole = int(weight)
    extra = int(num_samples * (weight - whole) + 1e-9)  # 0.29 * 100 is 28.999...: still 29
    rng = np.random.default_rng([seed, zlib.crc32(base_name.encode()), 1])
    tail = np.sort(rng.permutation(num_samples)[:extra])
    return np.concatenate([np.tile(np.arange(num_samples), whole), tail]).astype(np.int64)
