# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled hot kernels.  ``_fastscore_py.py`` is the pure-Python twin: same
functions, bit-identical results (see its docstring and the parity tests)."""

from libc.stdint cimport uint64_t

cdef uint64_t FNV64_OFFSET = 0xCBF29CE484222325ULL
cdef uint64_t FNV64_PRIME = 0x100000001B3ULL


cdef inline uint64_t _fnv1a(const unsigned char[:] data, uint64_t seed) noexcept nogil:
    cdef uint64_t h = FNV64_OFFSET ^ seed
    cdef Py_ssize_t i
    for i in range(data.shape[0]):
        h = (h ^ data[i]) * FNV64_PRIME
    return h


def hash_bytes(const unsigned char[:] data, uint64_t seed):
    """64-bit FNV-1a of ``data`` started from ``FNV64_OFFSET ^ seed`` (see the twin)."""
    return _fnv1a(data, seed)
