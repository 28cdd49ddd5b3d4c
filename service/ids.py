"""New record ids: UUIDs that begin with the time they were made (RFC 9562's version 7).

Documents, task runs and dead letters are found by id through B-tree indexes on both stores. A
random id (version 4) lands on a random leaf page of each such index, so a transaction of many
rows dirties a page per row and per index, and that page is written again at every commit — the
cost grows with the table. An id that begins with the time lands on the index's newest pages,
which a batch shares. The 74 bits after the time are random: fewer than a version 4's 122, still
beyond guessing, and the first 48 bits tell when the record was made (as its own timestamps do
to whoever may read it). Ids made in the same millisecond are in random order among themselves:
sorting by id is sorting by time only to the millisecond, which nothing relies on.

Python 3.14 brings `uuid.uuid7` (which also counts within a millisecond); until docproc runs on
it, this is the layout RFC 9562 gives.
"""

from __future__ import annotations

import os
import time
import uuid

_VERSION = 0x7 << 76
_VERSION_MASK = 0xF << 76
_VARIANT = 0b10 << 62
_VARIANT_MASK = 0b11 << 62


def new_id() -> str:
    """A version-7 UUID as text: 48 bits of Unix time in milliseconds, the version, 74 random
    bits around the variant."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    value = (value & ~_VERSION_MASK & ~_VARIANT_MASK) | _VERSION | _VARIANT
    return str(uuid.UUID(int=value))
