"""Small numba helpers for the frame hot path (validation only, no physics)."""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True)
def all_finite(values: np.ndarray) -> bool:
    """True if every element is finite; one pass, no temporary array."""
    for x in values.ravel():  # noqa: SIM110 - numba compiles this loop; all() of a generator it does not
        if not np.isfinite(x):
            return False
    return True
