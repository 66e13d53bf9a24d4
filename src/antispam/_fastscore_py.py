"""Pure-Python twin of ``_fastscore.pyx``: the same functions, bit-identical results.

Used when the compiled module is missing or ``ANTISPAM_NO_EXTENSIONS=1``.
Every function here must give exactly what its compiled twin gives, for every
input; ``tests/test_fastscore_parity.py`` checks them side by side.
"""

from __future__ import annotations

FNV64_OFFSET = 0xCBF29CE484222325
FNV64_PRIME = 0x100000001B3
MASK64 = 0xFFFFFFFFFFFFFFFF


def hash_bytes(data: bytes, seed: int) -> int:
    """64-bit FNV-1a of ``data``, started from ``FNV64_OFFSET ^ seed``.

    FNV-1a is tiny, has no tables, and is the same in every language; the seed
    lets a model pick its own hash space (stored in the model's metadata).
    """
    h = (FNV64_OFFSET ^ seed) & MASK64
    for b in data:
        h = ((h ^ b) * FNV64_PRIME) & MASK64
    return h
