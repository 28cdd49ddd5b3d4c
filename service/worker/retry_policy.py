"""When to retry a transient failure: exponential backoff with jitter, never a zero delay."""

from __future__ import annotations

import math
import random

MAX_DOUBLINGS = 60
"""Past 2 ** 60 seconds the step is the cap anyway (any cap a setting can hold is far below)."""


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> int:
    """Seconds to wait before retry number `attempt` (1 for the first retry).

    "Equal jitter": half of the exponential step is kept, the other half is random, so retries
    spread out without ever collapsing to zero. Whole seconds, at least one: Celery's native
    delayed delivery encodes the delay as whole seconds and refuses zero.
    """
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    # The exponent bounded before the power is taken: an attempt count comes from a message's
    # headers, and 2 ** (2 ** 31) took 13 s of CPU and 846 MB before the cap applied.
    step = min(cap, base * 2.0 ** min(attempt - 1, MAX_DOUBLINGS))
    jittered: float = step / 2 + (rng or random).uniform(0, step / 2)
    return max(1, math.ceil(jittered))
