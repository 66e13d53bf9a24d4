"""Build the optional compiled core (``antispam._fastscore``).

The package works without it: ``antispam._fastscore_py`` is a pure-Python twin
with bit-identical results.  A build without a C compiler (or without Cython)
therefore still installs, and says loudly that it fell back.
"""
import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
# Top-level data directories that ship inside the installed package, under antispam/data/.
DATA_DIRS = ("rules", "models", "samples")


class OptionalBuildExt(build_ext):
    """Build extensions, but never fail the install because of them."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler, no headers, ...
            _warn(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            _warn(exc)


class BuildPyWithData(build_py):
    """Copy the top-level rules/, models/ and samples/ into ``antispam/data/``.

    They live at the top of the repository (where operators and reviewers look
    for them) but must ship inside the wheel so that ``Engine()`` works after a
    plain ``pip install``.  In a source checkout ``antispam.resources`` finds them
    in place instead.
    """

    def run(self):
        super().run()
        import shutil

        for name in DATA_DIRS:
            src = os.path.join(HERE, name)
            if not os.path.isdir(src):
                continue
            dst = os.path.join(self.build_lib, "antispam", "data", name)
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _warn(exc):
    bar = "*" * 78
    sys.stderr.write(
        f"\n{bar}\nWARNING: antispam's compiled core could not be built ({exc}).\n"
        "antispam will run on its pure-Python fallback, which is several times slower.\n"
        f"Install a C compiler and Python headers, then reinstall, to get the fast path.\n{bar}\n\n"
    )


def _extensions():
    if os.environ.get("ANTISPAM_NO_EXTENSIONS") == "1" and os.environ.get("ANTISPAM_BUILD_PURE") == "1":
        return []
    try:
        from Cython.Build import cythonize
    except ImportError as exc:
        _warn(exc)
        return []
    from setuptools import Extension

    ext = Extension(
        "antispam._fastscore",
        ["src/antispam/_fastscore.pyx"],
        extra_compile_args=["-O3"],
    )
    return cythonize(
        [ext],
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    )


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt, "build_py": BuildPyWithData})
