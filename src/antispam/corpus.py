"""Reading mail from where operators keep it: files, directories, mbox, maildir, tar.gz.

Also the labelled SpamAssassin corpus layout (``MANIFEST.tsv`` beside one
``<set>.tar.gz`` per set) and the project's TRAIN/TEST split, used by the CLI,
the benchmarks, ``antispam eval`` and the tests alike.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

__all__ = ["Item", "iter_messages", "LabelledMessage", "load_labelled", "split_of", "default_corpus_dir"]


@dataclass(frozen=True, slots=True)
class Item:
    """One message read from a source: where it came from, and its bytes (or the error reading it)."""

    source: str
    data: bytes | None
    error: str | None = None


def _split_mbox(data: bytes, source: str) -> Iterator[Item]:
    """Split an mbox (mboxo/mboxrd): messages start at lines beginning ``From ``."""
    starts = [0] if data.startswith(b"From ") else []
    pos = 0
    while True:
        i = data.find(b"\n\nFrom ", pos)
        if i < 0:
            break
        starts.append(i + 2)
        pos = i + 2
    for k, s in enumerate(starts):
        e = starts[k + 1] if k + 1 < len(starts) else len(data)
        chunk = data[s:e]
        nl = chunk.find(b"\n")
        body = chunk[nl + 1 :] if nl >= 0 else b""
        # mboxrd: un-escape ">From " lines.
        if b"\n>From " in body:
            body = body.replace(b"\n>From ", b"\nFrom ")
        yield Item(f"{source}#{k + 1}", body)


def _iter_tar(path: Path) -> Iterator[Item]:
    try:
        with tarfile.open(path, "r:*") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                fh = tf.extractfile(member)
                if fh is None:
                    continue
                yield Item(f"{path}:{member.name}", fh.read())
    except (tarfile.TarError, OSError, EOFError) as exc:
        yield Item(str(path), None, f"cannot read archive: {exc}")


def iter_messages(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Item]:
    """Yield every message under ``paths``, in a stable order.

    Files are messages, unless they are mbox files (several ``From `` lines)
    or ``.tar``/``.tar.gz``/``.tgz`` archives, which are expanded.  Directories
    are walked recursively in sorted order, which covers maildirs (``cur``,
    ``new``).  A path that cannot be read yields an :class:`Item` with
    ``error`` set instead of stopping the run.
    """
    for p in paths:
        path = Path(p)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                if "tmp" in dirs and "cur" in dirs:  # maildir: tmp holds half-delivered mail
                    dirs.remove("tmp")
                for name in sorted(files):
                    if name.startswith(".") or name in ("MANIFEST.tsv", "cmds") or name.endswith(".md"):
                        continue
                    yield from iter_messages([Path(root) / name])
            continue
        name = path.name.lower()
        if name.endswith((".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")):
            yield from _iter_tar(path)
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:
            yield Item(str(path), None, f"cannot read: {exc.strerror or exc}")
            continue
        if data.startswith(b"From ") and data.count(b"\n\nFrom ") >= 1 and name.endswith((".mbox", ".mbx", "mbox")):
            yield from _split_mbox(data, str(path))
        else:
            yield Item(str(path), data)


# --------------------------------------------------------------------------- labelled corpus


@dataclass(frozen=True, slots=True)
class LabelledMessage:
    set: str
    name: str
    label: str  # "spam" or "ham"
    sha256: str
    data: bytes

    @property
    def is_spam(self) -> bool:
        return self.label == "spam"

    @property
    def split(self) -> str:
        return split_of(self.sha256)


def split_of(sha256_hex: str) -> str:
    """The project split: TEST when the first hex digit of the message sha256 is c-f, else TRAIN."""
    return "test" if sha256_hex[0] in "cdefCDEF" else "train"


def default_corpus_dir() -> Path | None:
    """``$ANTISPAM_CORPUS`` or ``../shared/corpora/spamassassin`` beside a checkout, if present."""
    env = os.environ.get("ANTISPAM_CORPUS")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for up in here.parents:
        cand = up.parent / "shared" / "corpora" / "spamassassin"
        if (cand / "MANIFEST.tsv").exists():
            return cand
    cand = Path.cwd().parent / "shared" / "corpora" / "spamassassin"
    return cand if (cand / "MANIFEST.tsv").exists() else None


def load_labelled(corpus_dir: str | os.PathLike[str], split: str | None = None, verify: bool = True) -> list[LabelledMessage]:
    """Load a labelled corpus laid out as ``MANIFEST.tsv`` + ``<set>.tar.gz``.

    ``split`` is ``"train"``, ``"test"`` or None for all.  With ``verify`` every
    message's sha256 is checked against the manifest (a mismatch is an error:
    evaluation on the wrong bytes is worse than none).
    """
    root = Path(corpus_dir)
    manifest: dict[tuple[str, str], tuple[str, str]] = {}
    with open(root / "MANIFEST.tsv", encoding="utf-8") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        col = {c: i for i, c in enumerate(header)}
        for line in fh:
            f = line.rstrip("\n").split("\t")
            if len(f) < len(header):
                continue
            manifest[(f[col["set"]], f[col["file"]])] = (f[col["label"]], f[col["sha256"]])
    out: list[LabelledMessage] = []
    for set_name in sorted({s for s, _ in manifest}):
        with tarfile.open(root / f"{set_name}.tar.gz", "r:gz") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                fname = member.name.rsplit("/", 1)[-1]
                key = (set_name, fname)
                if key not in manifest:
                    continue
                label, sha = manifest[key]
                if split is not None and split_of(sha) != split:
                    continue
                data = tf.extractfile(member).read()  # type: ignore[union-attr]
                if verify and hashlib.sha256(data).hexdigest() != sha:
                    raise ValueError(f"{set_name}/{fname}: sha256 does not match MANIFEST.tsv")
                out.append(LabelledMessage(set_name, fname, label, sha, data))
    out.sort(key=lambda m: (m.set, m.name))
    return out
