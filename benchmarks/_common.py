"""Shared by the benchmark scripts (not a benchmark): finding the corpus, and failing in one line.

A benchmark that lacks what it needs (the corpus, the peers' results, Hyperscan, a server that
did not start) says so on one line of stderr and exits with status 2, rather than with a
traceback or, worse, with figures measured on nothing.

``antispam`` is imported inside the functions, not here: ``rules_identity.py`` puts the source
tree it is given on ``sys.path`` first.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn


def die(message: str, status: int = 2) -> NoReturn:
    """``<script>: message`` on stderr (newlines folded), then exit ``status``."""
    print(f"{Path(sys.argv[0]).name}: {' '.join(str(message).split())}", file=sys.stderr)
    raise SystemExit(status)


def corpus_dir(given: str | os.PathLike[str] | None = None) -> Path:
    """The labelled corpus: ``given``, else ``$ANTISPAM_CORPUS``, else ``../shared/corpora/spamassassin``
    beside the checkout.  Missing, or without ``MANIFEST.tsv``: one line and exit 2."""
    from antispam.corpus import default_corpus_dir

    if given:
        d, what = Path(given), str(given)
    elif os.environ.get("ANTISPAM_CORPUS"):
        d, what = Path(os.environ["ANTISPAM_CORPUS"]), f"ANTISPAM_CORPUS={os.environ['ANTISPAM_CORPUS']}"
    else:
        found = default_corpus_dir()
        if found is None:
            die("SpamAssassin corpus not found: set ANTISPAM_CORPUS to the directory holding MANIFEST.tsv "
                "and the <set>.tar.gz files, or put it at ../shared/corpora/spamassassin beside the checkout")
        return found
    if not (d / "MANIFEST.tsv").is_file():
        die(f"{what}: no MANIFEST.tsv there (a labelled corpus is a directory holding MANIFEST.tsv and one "
            f"<set>.tar.gz per set)")
    return d


def labelled(given: str | os.PathLike[str] | None = None, **kw):  # type: ignore[no-untyped-def]
    """``load_labelled`` on :func:`corpus_dir`; a ``CorpusError`` (missing archive, bad sha256) is one line."""
    from antispam.corpus import CorpusError, load_labelled

    d = corpus_dir(given)
    try:
        msgs = load_labelled(d, **kw)
    except CorpusError as exc:
        die(str(exc))
    if not msgs:
        die(f"{d}: no messages{' in the ' + kw['split'] + ' split' if kw.get('split') else ''}")
    return msgs


def need_hyperscan(why: str) -> None:
    """Exit in one line unless the ``hyperscan`` module imports."""
    import importlib

    try:
        importlib.import_module("hyperscan")
    except ImportError as exc:
        die(f"{why} needs Hyperscan, which does not import here ({exc}): pip install hyperscan")
