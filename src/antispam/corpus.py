"""Reading mail from where operators keep it: files, directories, mbox, maildir, tar.gz.

Also the labelled SpamAssassin corpus layout (``MANIFEST.tsv`` beside one
``<set>.tar.gz`` per set) and the project's TRAIN/TEST split, used by the CLI,
the benchmarks, ``antispam eval`` and the tests alike.

Reading is streamed: :func:`iter_messages` holds one message at a time (at most
``max_bytes + 1`` bytes of it), so a scan of a large corpus needs no more
memory than its largest message.  Nothing a source can contain (a damaged
archive, a FIFO, an unlistable directory, a symlink loop) stops the run or
hangs it: each problem becomes one :class:`Item` with ``error`` set.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import re
import stat
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from .errors import AntispamError

try:  # each compression module is optional in a custom Python build
    import lzma
except ImportError:  # pragma: no cover - depends on the build
    lzma = None  # type: ignore[assignment]
try:
    import bz2
except ImportError:  # pragma: no cover - depends on the build
    bz2 = None  # type: ignore[assignment]
import gzip

__all__ = ["Item", "iter_messages", "LabelledMessage", "load_labelled", "split_of", "default_corpus_dir",
           "CorpusError"]

log = logging.getLogger("antispam.corpus")

#: What reading a damaged archive can raise: tarfile's own errors, and the decompressors' ones, which
#: tarfile lets through (a gzip CRC mismatch is an OSError, a damaged xz stream an LZMAError, a damaged
#: deflate stream a zlib.error, a stream cut short an EOFError).
_ARCHIVE_ERRORS: tuple[type[BaseException], ...] = (
    tarfile.TarError, OSError, EOFError, zlib.error, ValueError,
    *((lzma.LZMAError,) if lzma is not None else ()),
)
#: The file objects tarfile reads a compressed archive through: their checksums are only verified
#: when the stream is read to its end.
_COMPRESSED: tuple[type, ...] = (gzip.GzipFile, *((bz2.BZ2File,) if bz2 else ()), *((lzma.LZMAFile,) if lzma else ()))
_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_MBOX_SUFFIXES = (".mbox", ".mbx", "mbox")
#: A mbox ``From `` line: ``From sender date``, where the sender is an address (or ``MAILER-DAEMON``,
#: ``-``) and the date has a time of day, e.g. ``From a@example.com Mon Jan  1 00:00:00 2024``.  A message
#: file never starts with ``From `` (a header has a colon), but a file that just happens to start with
#: the word is not split unless the line looks like this.
_FROM_LINE = re.compile(rb"From (?:\S*@\S*\s.*|\S+\s.*\d{1,2}:\d{2})")
#: reads of a mbox are by line, at most this many bytes at a time (a line without newlines in a
#: corrupt file must not be read whole)
_LINE = 64 * 1024
#: names that are never messages in a directory walk (hidden files, this project's corpus files)
_NOT_MAIL = ("MANIFEST.tsv", "cmds")


class CorpusError(AntispamError, ValueError):
    """A labelled corpus is missing, incomplete or does not match its ``MANIFEST.tsv``.

    A ValueError too, as the sha256 mismatch it replaces was.
    """


@dataclass(frozen=True, slots=True)
class Item:
    """One message read from a source: where it came from, and its bytes (or the error reading it)."""

    source: str
    data: bytes | None
    error: str | None = None


def _error(source: str | os.PathLike[str], text: str) -> Item:
    """An error item, its text on one line: ``antispam scan`` prints one line per item, and the
    texts of some errors (tarfile's "could not be opened" lists every method tried) span several."""
    return Item(str(source), None, " ".join(str(text).split()))


def _why(exc: BaseException) -> str:
    """An OSError's reason without the file name (the item names the file), else the exception."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{exc}" or type(exc).__name__


#: the most one read asks for: see :func:`read_at_most`
_CHUNK = 1 << 20


def read_at_most(fh: BinaryIO, n: int) -> bytes:
    """At most ``n`` bytes of ``fh``, read a chunk at a time.

    ``fh.read(n)`` allocates ``n`` bytes before it reads one, so a huge ``[limits] max_bytes``
    (9223372036854775807 is a valid TOML integer) made every read fail with MemoryError or
    OverflowError, a traceback; read in chunks, the memory is what the file holds.
    """
    parts: list[bytes] = []
    while n > 0:
        piece = fh.read(min(n, _CHUNK))
        if not piece:
            break
        parts.append(piece)
        n -= len(piece)
    return b"".join(parts)


def read_message(fh: BinaryIO, cap: int, first: bytes | None = None) -> bytes:
    """One message from ``fh``: at most ``cap`` bytes, not counting a leading mbox ``From `` line
    (``first``: the first line, when the caller has read it already), which :class:`Message`
    drops before it compares the size with ``[limits] max_bytes``."""
    if first is None:
        first = fh.readline(1024)
    want = cap - len(first) + (len(first) if first.startswith(b"From ") else 0)
    return first + read_at_most(fh, want) if want > 0 else first


class _Capped:
    """Collects a message's bytes, keeping at most ``cap``: a message past ``[limits] max_bytes`` is
    scanned truncated anyway, and ``max_bytes + 1`` bytes are enough for :class:`Message` to see it
    was longer and say so (``SCAN_LIMIT``)."""

    __slots__ = ("cap", "parts", "size")

    def __init__(self, cap: int | None):
        self.cap = cap
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, piece: bytes) -> None:
        if self.cap is not None:
            if self.size >= self.cap:
                return
            piece = piece[: self.cap - self.size]
        self.parts.append(piece)
        self.size += len(piece)

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts, self.size = [], 0
        return data


def _split_mbox(fh: BinaryIO, first: bytes, source: str, cap: int | None) -> Iterator[Item]:
    """Split a mbox (mboxo/mboxrd) read from ``fh``, whose first line ``first`` was read already.

    A message starts at a line beginning ``From `` that is the first line of the file or follows an
    empty line, with LF or CRLF line ends alike.  The empty line before a ``From `` line and at the end
    of the file belongs to the mbox format, not to the message (as in Python's ``mailbox``), and
    ``>From `` lines are un-escaped.  Streamed: one message (at most ``cap`` bytes of it) is held at a
    time.  A file holding a single message keeps its own name as source; several are ``source#N``.
    """
    body = _Capped(cap)
    n = 0
    blank: bytes | None = None  # an empty line held back: the separator if a From line follows
    skip = not first.endswith(b"\n")  # the rest of an overlong From line
    line_start = True
    while True:
        piece = fh.readline(_LINE)
        if not piece:
            break
        starts, line_start = line_start, piece.endswith(b"\n")
        if skip:
            skip = not line_start
            continue
        if starts:
            if blank is not None and piece.startswith(b"From "):
                n += 1
                yield Item(f"{source}#{n}", body.take())
                blank = None
                skip = not line_start
                continue
            if piece in (b"\n", b"\r\n"):
                if blank is not None:
                    body.add(blank)
                blank = piece
                continue
            if blank is not None:
                body.add(blank)
                blank = None
            if piece.startswith(b">From "):
                piece = piece[1:]
        body.add(piece)
    yield Item(f"{source}#{n + 1}" if n else source, body.take())


class _TarInfo(tarfile.TarInfo):
    """Remembers on the TarFile why reading headers stopped: tarfile ends the iteration without a
    word at an invalid header past the first, which is how an archive damaged mid-way looks, as well
    as at the zero blocks that end a sound one."""

    @classmethod
    def fromtarfile(cls, tf: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        try:
            return super().fromtarfile(tf)
        except tarfile.HeaderError as exc:
            tf._antispam_stop = exc  # type: ignore[attr-defined]
            raise


def _iter_tar(path: Path, fh: BinaryIO, cap: int | None) -> Iterator[Item]:
    """Every regular member of a (compressed) tar archive, then an error item if it is damaged.

    Damage anywhere (a bad header, a corrupt compressed block, a checksum that does not match at the
    end, a stream cut short) gives one error item for the archive after the members read before it,
    never an exception or a silently short run: the whole compressed stream is read to its end, which
    is where gzip and xz verify their checksums.
    """
    count = 0
    try:
        with tarfile.open(name=str(path), fileobj=fh, mode="r:*", tarinfo=_TarInfo) as tf:
            for member in tf:
                if not member.isfile():
                    continue
                mf = tf.extractfile(member)
                if mf is None:
                    continue
                data = read_at_most(mf, cap) if cap is not None else mf.read()
                yield Item(f"{path}:{member.name}", data)
                count += 1
            stop = getattr(tf, "_antispam_stop", None)
            # Zero blocks end a sound archive; so does a plain end of file at a block boundary (some
            # writers leave the end-of-archive blocks out, and tar reads such archives).  Anything else
            # there is damage that tarfile would take for the end.
            if stop is not None and not isinstance(stop, (tarfile.EOFHeaderError, tarfile.EmptyHeaderError)):
                raise tarfile.ReadError(f"{stop} at offset {tf.offset}")
            if isinstance(tf.fileobj, _COMPRESSED):
                while tf.fileobj.read(1 << 20):
                    pass
    except _ARCHIVE_ERRORS as exc:
        after = f" after {count} message(s)" if count else ""
        yield _error(path, f"cannot read archive{after}: {type(exc).__name__}: {_why(exc)}")


class _NotRegular(OSError):
    """A path that is not a regular file where only one will do."""


def _open_checked(path: Path, regular_only: bool) -> BinaryIO:
    """Open ``path`` for reading; OSError (:class:`_NotRegular` for the kind of file) if it cannot be read.

    With ``regular_only`` (files met in a directory walk, a corpus's or a model's files) anything but a
    regular file is refused: reading a FIFO waits for a writer forever, a device may never end.  The
    check is on the opened descriptor (opened non-blocking, so opening a FIFO does not wait either), so
    a file swapped for a FIFO in between cannot slip through.  A path named by the operator may be a
    pipe (``antispam scan <(zcat x.gz)``, ``/dev/stdin``), which is read like a file.
    """
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    if regular_only:
        flags |= getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        kind = _kind(mode)
        if stat.S_ISDIR(mode) or (kind != "file" and (regular_only or stat.S_ISSOCK(mode))):
            raise _NotRegular(errno.EINVAL, f"not a regular file ({kind})")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _open(path: Path, regular_only: bool) -> tuple[BinaryIO | None, str | None]:
    """:func:`_open_checked` for a walk: the file, or why not."""
    try:
        return _open_checked(path, regular_only), None
    except _NotRegular as exc:
        return None, f"{exc.strerror}: skipped"
    except OSError as exc:
        return None, f"cannot read: {_why(exc)}"


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"


def _iter_file(path: Path, cap: int | None, regular_only: bool, single: bool = False) -> Iterator[Item]:
    """The message(s) of one file: an archive is expanded, a mbox split (``single``: neither, for a
    maildir's files, which hold one message each by definition)."""
    fh, why = _open(path, regular_only)
    if fh is None:
        yield _error(path, why or "cannot read")
        return
    with fh:
        name = path.name.lower()
        if not single and name.endswith(_TAR_SUFFIXES):
            yield from _iter_tar(path, fh, cap)
            return
        try:
            first = fh.readline(1024)
            if not single and first.startswith(b"From ") and (name.endswith(_MBOX_SUFFIXES) or _FROM_LINE.match(first)):
                yield from _split_mbox(fh, first, str(path), cap)
                return
            data = first + fh.read() if cap is None else read_message(fh, cap, first)
        except OSError as exc:
            yield _error(path, f"cannot read: {_why(exc)}")
            return
    yield Item(str(path), data)


def _listdir(path: Path) -> tuple[list[os.DirEntry[str]] | None, str | None]:
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name), None
    except OSError as exc:
        return None, f"cannot list directory: {_why(exc)}"


def _stat(entry: os.DirEntry[str]) -> os.stat_result | None:
    """The entry's status, following symbolic links; None for a dangling link or a link loop."""
    try:
        return entry.stat()
    except OSError:
        return None


def _iter_entry(entry: os.DirEntry[str], st: os.stat_result | None, cap: int | None, single: bool) -> Iterator[Item]:
    """One file met in a directory walk (``st``: its :func:`_stat`), read with ``regular_only``: the
    message(s) of a regular file, an error item for a dangling link or a special file.

    A directory is skipped without a word: the walk reaches the subdirectories it reads by itself,
    and one inside a maildir's ``cur``/``new`` is no mail.  ``single`` as for :func:`_iter_file`.
    """
    if st is None:
        yield _error(entry.path, "cannot read: a dangling symbolic link or a link loop")
    elif stat.S_ISREG(st.st_mode):
        yield from _iter_file(Path(entry.path), cap, regular_only=True, single=single)
    elif not stat.S_ISDIR(st.st_mode):
        yield _error(entry.path, f"not a regular file ({_kind(st.st_mode)}): skipped")


def _iter_dir(path: Path, st: os.stat_result, visited: set[tuple[int, int]], cap: int | None) -> Iterator[Item]:
    """A directory, recursively in name order: its files, then its subdirectories.

    Symbolic links to directories are followed; ``visited`` (device, inode) pairs keep a link back to
    an ancestor (or any directory reached twice) from being read again, so loops end.  A maildir
    (``cur`` and ``new``) is read as one: see :func:`_iter_maildir`.  A directory that cannot be
    listed, an entry that cannot be read, or one that is not a regular file becomes an error item.
    """
    key = (st.st_dev, st.st_ino)
    if key in visited:
        return
    visited.add(key)
    entries, why = _listdir(path)
    if entries is None:
        yield _error(path, why or "cannot list directory")
        return
    stats = {e.name: _stat(e) for e in entries}
    subdirs = {name for name, s in stats.items() if s is not None and stat.S_ISDIR(s.st_mode)}
    if "cur" in subdirs and "new" in subdirs:
        yield from _iter_maildir(path, entries, stats, visited, cap)
        return
    for e in entries:
        if e.name in subdirs or e.name.startswith(".") or e.name in _NOT_MAIL or e.name.endswith(".md"):
            continue
        yield from _iter_entry(e, stats[e.name], cap, single=False)
    for e in entries:
        if e.name in subdirs:
            yield from _iter_dir(Path(e.path), stats[e.name], visited, cap)  # type: ignore[arg-type]


def _iter_maildir(path: Path, entries: list[os.DirEntry[str]], stats: dict[str, os.stat_result | None],
                  visited: set[tuple[int, int]], cap: int | None) -> Iterator[Item]:
    """A maildir: the messages in ``cur`` and ``new``, then its subfolders that are maildirs too
    (Maildir++ ``.Folder``, or ``Folder`` in a file-system layout).

    Everything else is the mail server's, not mail: ``tmp`` (deliveries in progress), ``dovecot-uidlist``,
    ``dovecot.index*``, ``subscriptions``, ``courierimap*``...; scanned as messages they were verdicts on
    junk.
    """
    for sub in ("cur", "new"):
        d = path / sub
        s = stats[sub]
        assert s is not None
        visited.add((s.st_dev, s.st_ino))
        files, why = _listdir(d)
        if files is None:
            yield _error(d, why or "cannot list directory")
            continue
        for e in files:
            if not e.name.startswith("."):
                yield from _iter_entry(e, _stat(e), cap, single=True)
    for e in entries:
        s = stats[e.name]
        if e.name in ("cur", "new", "tmp") or s is None or not stat.S_ISDIR(s.st_mode):
            continue
        try:
            with os.scandir(e.path) as it:
                inner = {x.name for x in it if x.is_dir()}
        except OSError as exc:
            yield _error(e.path, f"cannot list directory: {_why(exc)}")
            continue
        if "cur" in inner and "new" in inner:
            yield from _iter_dir(Path(e.path), s, visited, cap)


def iter_messages(paths: Iterable[str | os.PathLike[str]], max_bytes: int | None = None) -> Iterator[Item]:
    """Yield every message under ``paths``, in a stable order, one at a time.

    Files are messages, unless they are mbox files (the first line is a mbox ``From `` line, or the
    name ends in ``mbox``/``.mbx``), which are split, or ``.tar``/``.tar.gz``/``.tgz``/``.tar.bz2``/
    ``.tar.xz`` archives, which are expanded.  Directories are walked recursively in name order,
    following symbolic links (each directory once); a maildir yields only its messages.  Hidden
    files, ``MANIFEST.tsv`` and ``*.md`` in a walked directory are not mail.

    With ``max_bytes`` (the engine's ``[limits] max_bytes``) at most ``max_bytes + 1`` bytes of a
    message are read: the scan reads no more, and sees from the extra byte that the message was cut.

    Anything that cannot be read (a missing path, an unlistable directory, a damaged archive, a
    FIFO or device met in a walk) yields an :class:`Item` with ``error`` set, on one line, instead
    of stopping (or hanging) the run.
    """
    cap = max_bytes + 1 if max_bytes is not None else None
    for p in paths:
        if not os.fspath(p):
            # Path("") is ".": `antispam scan "$UNSET"` silently scanned (or learned, or trained on)
            # the whole current directory
            yield _error("", "cannot read: an empty path names no file")
            continue
        path = Path(p)
        try:
            st = os.stat(path)
        except OSError as exc:
            yield _error(path, f"cannot read: {_why(exc)}")
            continue
        if stat.S_ISDIR(st.st_mode):
            yield from _iter_dir(path, st, set(), cap)
        else:
            yield from _iter_file(path, cap, regular_only=False)


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


_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


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


def open_regular(path: Path) -> BinaryIO:
    """A file that must be a regular one (a labelled corpus's ``MANIFEST.tsv`` and set archives, a
    model's files) opened for reading; OSError unless it is a regular file.  As a file met in a
    directory walk is (:func:`_open_checked`): a FIFO there made ``antispam train --manifest``/``eval``
    wait for a writer for ever, a link to ``/dev/zero`` read until memory ran out."""
    return _open_checked(path, True)


def load_labelled(corpus_dir: str | os.PathLike[str], split: str | None = None, verify: bool = True) -> list[LabelledMessage]:
    """Load a labelled corpus laid out as ``MANIFEST.tsv`` + ``<set>.tar.gz``.

    ``split`` is ``"train"``, ``"test"`` or None for all.  With ``verify`` every
    message's sha256 is checked against the manifest (a mismatch is an error:
    evaluation on the wrong bytes is worse than none).

    A missing or unreadable manifest or set archive is a :class:`CorpusError`.
    Manifest entries of the split that no archive holds, and manifest lines that
    cannot be read (too few tab-separated fields, a label other than spam/ham, a
    sha256 that is not 64 hex digits), are logged as a warning with their counts:
    the run goes on, but an evaluation on fewer messages than the manifest lists
    must not pass unnoticed.
    """
    root = Path(corpus_dir)
    mpath = root / "MANIFEST.tsv"
    manifest: dict[tuple[str, str], tuple[str, str]] = {}
    malformed: list[int] = []
    try:
        with io.TextIOWrapper(open_regular(mpath), encoding="utf-8") as fh:
            header = fh.readline().rstrip("\r\n").split("\t")
            col = {c: i for i, c in enumerate(header)}
            need = [c for c in ("set", "file", "label", "sha256") if c not in col]
            if need:
                raise CorpusError(f"{mpath}: the header line has no {', '.join(need)} column(s) "
                                  f"(expected tab-separated set, file, label, sha256)")
            for lineno, line in enumerate(fh, start=2):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                f = line.split("\t")
                if len(f) < len(header):
                    malformed.append(lineno)
                    continue
                label, sha = f[col["label"]], f[col["sha256"]]
                if label not in ("spam", "ham") or not _SHA256.fullmatch(sha):
                    malformed.append(lineno)
                    continue
                manifest[(f[col["set"]], f[col["file"]])] = (label, sha)
    except OSError as exc:
        raise CorpusError(f"cannot read {mpath}: {_why(exc)} (a labelled corpus is a directory holding "
                          f"MANIFEST.tsv and one <set>.tar.gz per set)") from None
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{mpath}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    wanted = {k for k, (_, sha) in manifest.items() if split is None or split_of(sha) == split}
    found: set[tuple[str, str]] = set()
    out: list[LabelledMessage] = []
    for set_name in sorted({s for s, _ in manifest}):
        tpath = root / f"{set_name}.tar.gz"
        try:
            with open_regular(tpath) as raw, tarfile.open(name=str(tpath), fileobj=raw, mode="r:gz") as tf:
                for member in tf:
                    if not member.isfile():
                        continue
                    fname = member.name.rsplit("/", 1)[-1]
                    key = (set_name, fname)
                    if key not in wanted:
                        continue
                    label, sha = manifest[key]
                    data = tf.extractfile(member).read()  # type: ignore[union-attr]
                    if verify and hashlib.sha256(data).hexdigest() != sha:
                        raise CorpusError(f"{set_name}/{fname}: sha256 does not match MANIFEST.tsv")
                    found.add(key)
                    out.append(LabelledMessage(set_name, fname, label, sha, data))
        except FileNotFoundError:
            n = sum(1 for s, _ in manifest if s == set_name)
            raise CorpusError(f"{tpath} is missing: MANIFEST.tsv lists {n} message(s) of set {set_name!r}") from None
        except _ARCHIVE_ERRORS as exc:
            if isinstance(exc, CorpusError):
                raise
            raise CorpusError(f"cannot read {tpath}: {type(exc).__name__}: {_why(exc)}") from None
    missing = sorted(wanted - found)
    if missing or malformed:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of {len(wanted)} MANIFEST.tsv entr{'y' if len(missing) == 1 else 'ies'} "
                         f"not found in the set archives (e.g. {', '.join(f'{s}/{n}' for s, n in missing[:3])})")
        if malformed:
            parts.append(f"{len(malformed)} malformed MANIFEST.tsv line(s) skipped (line "
                         f"{', '.join(map(str, malformed[:5]))}{', ...' if len(malformed) > 5 else ''})")
        log.warning("%s: %s; loaded %d message(s)", root, "; ".join(parts), len(out))
    out.sort(key=lambda m: (m.set, m.name))
    return out
