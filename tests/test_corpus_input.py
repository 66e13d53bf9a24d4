"""Reading mail from disk (antispam.corpus): damaged archives, FIFOs, unlistable and symlinked
directories, mbox and maildir layouts, size caps, and the labelled corpus manifest.

Every message here is written by the test itself; nothing is copied from a corpus.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import tarfile
import threading
from pathlib import Path

import pytest

from antispam.corpus import CorpusError, iter_messages, load_labelled


def msg(i: int, extra: bytes = b"") -> bytes:
    return (b"From: a%d@example.com\nTo: b@example.org\nSubject: test %d\nMessage-ID: <m%d@example.com>\n\n"
            b"hello %d\n" % (i, i, i, i)) + extra


def mbox(n: int, eol: bytes = b"\n") -> bytes:
    out = b""
    for i in range(n):
        out += b"From a%d@example.com Mon Jan  1 00:00:00 2024\n" % i + msg(i, b">From the desk of nobody\n") + b"\n"
    return out.replace(b"\n", eol)


def damaged_archive(path: Path, mode: str, members: int = 40) -> None:
    """An archive of incompressible-ish messages with 64 bytes flipped at 60% of its length: the first
    members read fine, then the stream is damaged."""
    rnd = random.Random(1)
    with tarfile.open(path, mode) as tf:
        for i in range(members):
            body = " ".join(rnd.choice(["alpha", "beta", "gamma", f"x{rnd.randrange(10**6)}"]) for _ in range(800))
            data = b"From: a@example.com\nSubject: s%d\n\n%s\n" % (i, body.encode())
            ti = tarfile.TarInfo(f"m{i:02d}.eml")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    b = bytearray(path.read_bytes())
    at = int(len(b) * 0.6)
    for k in range(at, at + 64):
        b[k] ^= 0xA5
    path.write_bytes(bytes(b))


# ----------------------------------------------------------------------------- 1. damaged archives


@pytest.mark.parametrize("ext,mode", [("tar.gz", "w:gz"), ("tar.xz", "w:xz"), ("tar.bz2", "w:bz2")])
def test_archive_damaged_midstream_gives_an_error_item_and_the_run_goes_on(tmp_path, ext, mode):
    bad = tmp_path / "d" / f"mid.{ext}"
    bad.parent.mkdir()
    damaged_archive(bad, mode)
    (tmp_path / "d" / "z.eml").write_bytes(msg(1))
    items = list(iter_messages([tmp_path / "d", tmp_path / "after.eml"]))
    errors = [it for it in items if it.data is None]
    assert [it.source for it in errors] == [str(bad), str(tmp_path / "after.eml")]
    assert "cannot read archive" in errors[0].error and "\n" not in errors[0].error
    read = [it for it in items if it.data is not None]
    assert len(read) < 41 and read[-1].source == str(tmp_path / "d" / "z.eml")  # the walk went on


def test_gzip_checksum_is_verified_at_the_end_of_the_stream(tmp_path):
    """A .tar.gz whose members all read but whose CRC does not match: the damage is reported."""
    p = tmp_path / "crc.tar.gz"
    with tarfile.open(p, "w:gz") as tf:
        for i in range(3):
            ti = tarfile.TarInfo(f"m{i}.eml")
            ti.size = len(msg(i))
            tf.addfile(ti, io.BytesIO(msg(i)))
    b = bytearray(p.read_bytes())
    b[-8] ^= 0xFF  # the CRC32 in the gzip trailer
    p.write_bytes(bytes(b))
    items = list(iter_messages([p]))
    assert [it.data for it in items[:3]] == [msg(0), msg(1), msg(2)]
    assert items[-1].data is None and "after 3 message(s)" in items[-1].error


def test_error_texts_are_one_line(tmp_path):
    p = tmp_path / "junk.tar.gz"
    p.write_bytes(b"this is not an archive\n" * 50)
    (it,) = list(iter_messages([p]))
    assert it.data is None and it.error and "\n" not in it.error and "cannot read archive" in it.error


# ----------------------------------------------------------------------------- 3. size cap


def test_at_most_max_bytes_plus_one_read_per_message(tmp_path):
    big = msg(1) + b"x" * 10_000
    (tmp_path / "big.eml").write_bytes(big)
    (tmp_path / "box.mbox").write_bytes(b"From a@example.com Mon Jan  1 00:00:00 2024\n" + big + b"\n\n"
                                        + b"From b@example.com Mon Jan  1 00:00:00 2024\n" + msg(2) + b"\n")
    with tarfile.open(tmp_path / "a.tar", "w") as tf:
        ti = tarfile.TarInfo("big.eml")
        ti.size = len(big)
        tf.addfile(ti, io.BytesIO(big))
    items = list(iter_messages([tmp_path / "big.eml", tmp_path / "box.mbox", tmp_path / "a.tar"], max_bytes=1000))
    assert [len(it.data) for it in items] == [1001, 1001, len(msg(2)), 1001]
    assert items[0].data == big[:1001] and items[2].data == msg(2)
    assert [len(it.data) for it in iter_messages([tmp_path / "big.eml"])] == [len(big)]  # no cap: all


def test_capped_message_is_scanned_with_scan_limit(tmp_path):
    from antispam import Config, Engine

    (tmp_path / "big.eml").write_bytes(msg(1) + b"x" * 10_000)
    e = Engine(Config.load(overrides={"limits": {"max_bytes": 1000}}))
    (it,) = list(iter_messages([tmp_path / "big.eml"], max_bytes=e.limits.max_bytes))
    assert e.scan(it.data).has("SCAN_LIMIT")


# ----------------------------------------------------------------------------- 4. FIFOs


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_in_a_directory_is_an_error_item_not_a_hang(tmp_path):
    (tmp_path / "a.eml").write_bytes(msg(1))
    fifo = tmp_path / "b.fifo"
    os.mkfifo(fifo)
    got: list = []
    t = threading.Thread(target=lambda: got.extend(iter_messages([tmp_path])), daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():  # unblock the reader stuck in open() so the thread can end
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        t.join(5)
        pytest.fail("reading a directory with a FIFO in it hung")
    assert [(Path(it.source).name, it.data is None) for it in got] == [("a.eml", False), ("b.fifo", True)]
    assert "not a regular file" in got[1].error


# ----------------------------------------------------------------------------- 5. directories


def test_unlistable_subdirectory_is_an_error_item(tmp_path, monkeypatch):
    (tmp_path / "open").mkdir()
    (tmp_path / "open" / "a.eml").write_bytes(msg(1))
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "b.eml").write_bytes(msg(2))
    real = os.scandir
    locked = str(tmp_path / "locked")

    def scandir(path="."):  # as root, chmod 000 would not stop us: refuse the listing here instead
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    items = list(iter_messages([tmp_path]))
    monkeypatch.undo()
    by = {os.path.relpath(it.source, tmp_path): it for it in items}
    assert set(by) == {"open/a.eml", "locked"}
    assert by["locked"].data is None and "Permission denied" in by["locked"].error


def test_symlinked_directories_are_followed_once_and_loops_end(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "a.eml").write_bytes(msg(1))
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "b.eml").write_bytes(msg(2))
    os.symlink(real, tree / "linked")
    os.symlink(".", tree / "again")          # a link to itself
    os.symlink(tree, real / "back")          # real/back -> tree -> linked -> real: a loop
    items = list(iter_messages([tree]))
    assert [os.path.relpath(it.source, tree) for it in items] == ["b.eml", "linked/a.eml"]
    assert all(it.data is not None for it in items)


# ----------------------------------------------------------------------------- 6. mbox


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_mbox_split_with_either_line_end(tmp_path, eol):
    p = tmp_path / "box.mbox"
    p.write_bytes(mbox(3, eol))
    items = list(iter_messages([p]))
    assert [it.source for it in items] == [f"{p}#1", f"{p}#2", f"{p}#3"]
    for i, it in enumerate(items):
        assert it.data == msg(i, b"From the desk of nobody\n").replace(b"\n", eol)  # un-escaped, no separator line


def test_mbox_recognised_by_content_without_suffix(tmp_path):
    spool = tmp_path / "alice"   # /var/mail/alice: no suffix
    spool.write_bytes(mbox(3))
    assert [it.source for it in iter_messages([spool])] == [f"{spool}#1", f"{spool}#2", f"{spool}#3"]
    one = tmp_path / "one.eml"    # a single message saved with its From line keeps its own name
    one.write_bytes(b"From a@example.com Mon Jan  1 00:00:00 2024\n" + msg(9))
    assert [(it.source, it.data) for it in iter_messages([one])] == [(str(one), msg(9))]
    plain = tmp_path / "plain.eml"  # an ordinary message that mentions From lines is not split
    plain.write_bytes(msg(1, b"\nFrom a@example.com Mon Jan  1 00:00:00 2024\n"))
    assert [it.data for it in iter_messages([plain])] == [plain.read_bytes()]


# ----------------------------------------------------------------------------- 7. maildir


def test_maildir_reads_only_messages(tmp_path):
    md = tmp_path / "Maildir"
    for d in ("cur", "new", "tmp", ".Sent/cur", ".Sent/new", ".Sent/tmp"):
        (md / d).mkdir(parents=True)
    (md / "cur" / "1.host:2,S").write_bytes(msg(1))
    (md / "new" / "2.host").write_bytes(msg(2))
    (md / "tmp" / "3.host").write_bytes(msg(3))
    (md / ".Sent" / "cur" / "4.host:2,S").write_bytes(msg(4))
    (md / ".Sent" / "tmp" / "5.host").write_bytes(msg(5))
    (md / ".Sent" / "maildirfolder").write_bytes(b"")
    (md / "dovecot-uidlist").write_bytes(b"3 V1 N3\n1 :1.host\n")
    (md / "subscriptions").write_bytes(b"Sent\n")
    (md / "dovecot.index.log").write_bytes(bytes(range(256)) * 4)
    (md / "dovecot.index.cache").write_bytes(bytes(range(256)))
    items = list(iter_messages([md]))
    assert [os.path.relpath(it.source, md) for it in items] == ["cur/1.host:2,S", "new/2.host", ".Sent/cur/4.host:2,S"]
    assert [it.data for it in items] == [msg(1), msg(2), msg(4)]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_odd_entries_in_a_plain_directory_and_in_a_maildir(tmp_path):
    """Both walks read an entry alike: a dangling link and a FIFO are error items; a maildir's file is
    one message even when it looks like a mbox, and a directory inside its ``cur`` is skipped."""
    box = b"From a@example.com Mon Jan  1 00:00:00 2024\n" + msg(1) + b"\nFrom b@example.com Mon Jan  1 00:00:01 2024\n" + msg(2)
    plain, md = tmp_path / "plain", tmp_path / "md"
    for d in (plain, md / "cur" / "sub", md / "new"):
        d.mkdir(parents=True)
    for d in (plain, md / "cur"):
        (d / "box").write_bytes(box)
        os.symlink(tmp_path / "nowhere", d / "gone")
        os.mkfifo(d / "pipe")
    (md / "cur" / "sub" / "x").write_bytes(msg(3))
    got = [(os.path.relpath(it.source, tmp_path), it.error.split(":")[0] if it.error else None)
           for it in iter_messages([plain, md])]
    assert got == [("plain/box#1", None), ("plain/box#2", None), ("plain/gone", "cannot read"),
                   ("plain/pipe", "not a regular file (FIFO)"),
                   ("md/cur/box", None), ("md/cur/gone", "cannot read"), ("md/cur/pipe", "not a regular file (FIFO)")]


# ----------------------------------------------------------------------------- 15. manifest


def labelled_corpus(d: Path, archive_holds: int = 3, extra_lines: tuple[str, ...] = ()) -> dict[str, bytes]:
    msgs = {f"m{i}": b"Subject: %d\n\nbody %d\n" % (i, i) for i in range(4)}
    lines = ["set\tfile\tlabel\tsha256"] + [f"s1\t{n}\t{'spam' if i % 2 else 'ham'}\t{hashlib.sha256(b).hexdigest()}"
                                             for i, (n, b) in enumerate(msgs.items())]
    (d / "MANIFEST.tsv").write_text("\n".join(lines + list(extra_lines)) + "\n")
    with tarfile.open(d / "s1.tar.gz", "w:gz") as tf:
        for n, b in list(msgs.items())[:archive_holds]:
            ti = tarfile.TarInfo(f"s1/{n}")
            ti.size = len(b)
            tf.addfile(ti, io.BytesIO(b))
    return msgs


def test_manifest_entries_missing_from_the_archive_and_bad_lines_are_reported(tmp_path, caplog):
    labelled_corpus(tmp_path, archive_holds=3, extra_lines=("s1\tm9 spam deadbeef",))
    with caplog.at_level(logging.WARNING, logger="antispam.corpus"):
        got = load_labelled(tmp_path)
    assert [m.name for m in got] == ["m0", "m1", "m2"]
    text = caplog.text
    assert "1 of 4 MANIFEST.tsv entry not found" in text and "s1/m3" in text
    assert "1 malformed MANIFEST.tsv line(s)" in text and "line 6" in text


def test_complete_manifest_loads_without_warning(tmp_path, caplog):
    labelled_corpus(tmp_path, archive_holds=4)
    with caplog.at_level(logging.WARNING, logger="antispam.corpus"):
        assert len(load_labelled(tmp_path)) == 4
    assert not caplog.records


def test_missing_manifest_or_set_archive_is_a_corpus_error(tmp_path):
    with pytest.raises(CorpusError, match="MANIFEST.tsv"):
        load_labelled(tmp_path / "nope")
    labelled_corpus(tmp_path)
    (tmp_path / "s1.tar.gz").unlink()
    with pytest.raises(CorpusError, match=r"s1\.tar\.gz is missing"):
        load_labelled(tmp_path)
