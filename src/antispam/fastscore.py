"""One switch between the compiled kernels and their pure-Python twin.

``antispam.fastscore.impl`` is ``antispam._fastscore`` (Cython) when it was
built and ``ANTISPAM_NO_EXTENSIONS`` is not ``1``; otherwise the twin
``antispam._fastscore_py``.  Both give identical results, so the choice only
changes speed.  ``IMPLEMENTATION`` says which one is active
(``antispam --version`` prints it).
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType

from . import _fastscore_py

impl: ModuleType
IMPLEMENTATION: str

if os.environ.get("ANTISPAM_NO_EXTENSIONS", "") == "1":
    impl, IMPLEMENTATION = _fastscore_py, "python (ANTISPAM_NO_EXTENSIONS=1)"
else:
    try:
        from . import _fastscore as _compiled  # type: ignore[attr-defined]
    except ImportError as exc:  # built without a compiler
        warnings.warn(
            f"antispam: compiled core unavailable ({exc}); using the pure-Python fallback, which is slower",
            RuntimeWarning,
            stacklevel=2,
        )
        impl, IMPLEMENTATION = _fastscore_py, "python (compiled core not built)"
    else:
        impl, IMPLEMENTATION = _compiled, "cython"

python_impl = _fastscore_py
