"""The one switch between the compiled core and its pure-Python twin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from antispam import fastscore

ROOT = Path(__file__).parent.parent


def _impl_in_subprocess(env_value):
    env = {k: v for k, v in os.environ.items() if k != "ANTISPAM_NO_EXTENSIONS"}
    env["PYTHONPATH"] = str(ROOT / "src")
    if env_value is not None:
        env["ANTISPAM_NO_EXTENSIONS"] = env_value
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", "from antispam import fastscore; print(fastscore.impl.__name__)"],
                         env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_env_switch_selects_python_twin():
    assert _impl_in_subprocess("1") == "antispam._fastscore_py"


def test_compiled_core_is_used_when_built():
    try:
        import antispam._fastscore  # noqa: F401
    except ImportError:
        pytest.skip("compiled core not built in this environment")
    assert _impl_in_subprocess(None) == "antispam._fastscore"


@pytest.mark.parametrize("data,seed", [(b"", 0), (b"a", 0), (b"subject:free", 0), (b"subject:free", 12345),
                                        ("überweisung".encode(), 7), (bytes(range(256)), 2**63)])
def test_hash_parity(data, seed):
    try:
        from antispam import _fastscore
    except ImportError:
        pytest.skip("compiled core not built")
    assert _fastscore.hash_bytes(data, seed) == fastscore.python_impl.hash_bytes(data, seed)


def test_hash_fixed_vectors():
    # FNV-1a 64 with seed 0 is the published FNV-1a: these values pin the function forever.
    h = fastscore.python_impl.hash_bytes
    assert h(b"", 0) == 0xCBF29CE484222325
    assert h(b"a", 0) == 0xAF63DC4C8601EC8C
    assert h(b"foobar", 0) == 0x85944171F73967E8
