"""When to retry a transient failure: exponential backoff with jitter, never a zero delay."""

from __future__ import annotations

import math
import random


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> int:
    """Seconds to wait before retry number `attempt` (1 for the first retry).

    "Equal jitter": half of the exponential step is kept, the other half is random, so retries
    spread out without ever collapsing to zero. Whole seconds, at least one: Celery's native
    delayed delivery encodes the delay as whole seconds and refuses zero.
    """
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    step = min(cap, base * 2 ** (attempt - 1))
    jittered: float = step / 2 + (rng or random).uniform(0, step / 2)
    return max(1, math.ceil(jittered))
