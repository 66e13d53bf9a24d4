"""The antispam command on the bundled samples, mbox files, archives and unreadable input."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path


from antispam.cli import main
from antispam.resources import samples_dir

SAMPLES = samples_dir()


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_samples_exist_and_gtube_rejected(capsys):
    code, out, err = run(capsys, "scan", str(SAMPLES), "--no-progress")
    assert code == 0
    lines = dict((l.split("\t")[0], l.split("\t")) for l in out.strip().splitlines())
    gtube = [v for k, v in lines.items() if k.endswith("gtube.eml")][0]
    assert gtube[1] == "reject" and "GTUBE" in gtube[3]
    assert not any(k.endswith(".md") for k in lines)
    hams = [v for k, v in lines.items() if "/ham-" in k]
    assert len(hams) == 3 and all(v[1] == "no action" for v in hams)
    spams = [v for k, v in lines.items() if "/spam-" in k]
    assert len(spams) == 3 and all(v[1] != "no action" for v in spams)
    assert "message(s) scanned" in err and "reject:" in err


def test_json_output_is_rspamd_shape(capsys):
    code, out, _ = run(capsys, "scan", "--json", str(SAMPLES / "gtube.eml"))
    d = json.loads(out)
    assert d["action"] == "reject" and "GTUBE" in d["symbols"] and d["file"].endswith("gtube.eml")


def test_mbox_tar_and_errors_do_not_stop_the_run(capsys, tmp_path):
    gt = (SAMPLES / "gtube.eml").read_bytes()
    ham = (SAMPLES / "ham-meeting.eml").read_bytes()
    mbox = tmp_path / "box.mbox"
    mbox.write_bytes(b"From a@b Mon Jan 1 00:00:00 2026\n" + ham + b"\nFrom c@d Mon Jan 1 00:00:00 2026\n" + gt + b"\n")
    tgz = tmp_path / "set.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(SAMPLES / "gtube.eml", arcname="set/one")
        tf.add(SAMPLES / "ham-meeting.eml", arcname="set/two")
    code, out, err = run(capsys, "scan", str(mbox), str(tgz), str(tmp_path / "missing.eml"), "--no-progress")
    rows = [l.split("\t") for l in out.strip().splitlines()]
    assert [r[1] for r in rows] == ["no action", "reject", "reject", "no action", "error"]
    assert rows[0][0].endswith("box.mbox#1") and rows[2][0].endswith("set.tar.gz:set/one")
    assert code == 0 and "1 unreadable" in err


def test_workers_give_same_output(capsys):
    _, one, _ = run(capsys, "scan", str(SAMPLES), "--no-progress")
    _, two, _ = run(capsys, "scan", str(SAMPLES), "--no-progress", "-j", "2")
    assert one == two


def test_bad_config_is_a_clear_error(capsys, tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[engine]\nnope = 1\n")
    code, _, err = run(capsys, "-c", str(f), "scan", str(SAMPLES))
    assert code == 2 and "engine.nope" in err


def test_checks_and_config_commands(capsys):
    code, out, _ = run(capsys, "checks")
    assert code == 0 and "GTUBE" in out and "gtube (content)" in out
    code, out, _ = run(capsys, "config")
    assert json.loads(out)["actions"]["reject"] == 15.0


def test_version_names_the_core_implementation():
    out = subprocess.run([sys.executable, "-m", "antispam", "--version"], capture_output=True, text=True,
                         cwd=Path(__file__).parent.parent, env={**__import__("os").environ, "PYTHONPATH": "src"})
    assert out.returncode == 0 and "core:" in out.stdout


def test_learn_command_keeps_counts_in_the_store(capsys, tmp_path):
    cfg = tmp_path / "site.toml"
    cfg.write_text(f'[store]\nurl = "sqlite:///{tmp_path}/state.db"\n')
    spam = str(SAMPLES / "spam-lottery.eml")
    code, out, _ = run(capsys, "-c", str(cfg), "learn", "--spam", spam)
    assert code == 0 and "learned as spam: 1; unchanged: 0" in out
    code, out, _ = run(capsys, "-c", str(cfg), "learn", "--spam", spam)
    assert "learned as spam: 0; unchanged: 1" in out           # the same message counts once
    code, out, _ = run(capsys, "-c", str(cfg), "learn", "--forget", spam)
    assert "forgot: 1" in out
    code, _, err = run(capsys, "learn", "--ham", spam)          # default memory:// store: refused, with why
    assert code == 2 and "[store] url" in err


# ----------------------------------------------------------------------------- scan: robustness

import io
import os
import re

import pytest

from antispam import Check, Engine, Hit, Question, SymbolDef
from antispam.builtin import GTUBE, GtubeCheck


class CrashOn(Check):
    """Kills the worker process scanning it, as a crash in a C kernel or the OOM killer would:
    ``KILLME`` every time, ``KILLONCE:<flag file>`` the first time only.  Only ever run in pool workers."""

    name = "crashon"
    symbols = (SymbolDef("CRASHON", 0.0, "test", "misc"),)

    def run(self, msg, ctx):
        if b"KILLME" in msg.raw:
            os._exit(139)
        m = re.search(rb"KILLONCE:(\S+)", msg.raw)
        if m:
            flag = Path(os.fsdecode(m.group(1)))
            if not flag.exists():
                flag.touch()
                os._exit(137)
        return []


def numbered(i: int, body: bytes = b"hello") -> bytes:
    return b"From: a@example.com\nSubject: m%d\n\n%s %d\n" % (i, body, i)


def test_scan_many_survives_dying_workers_in_order(tmp_path):
    e = Engine(checks=[GtubeCheck(), CrashOn()])
    msgs = [numbered(i) for i in range(40)]
    msgs[7] = numbered(7, b"KILLONCE:" + os.fsencode(tmp_path / "flag"))  # a worker dies once: no trace
    msgs[25] = numbered(25, b"KILLME")                                     # kills every worker it meets
    msgs[30] = numbered(30, GTUBE)
    verdicts = list(e.scan_many(msgs, workers=2, chunksize=2))
    # in order; the message that killed its worker twice is not parsed again in this process
    assert [v.subject for v in verdicts] == [f"m{i}" if i != 25 else None for i in range(40)]
    assert (tmp_path / "flag").exists()
    assert [i for i, v in enumerate(verdicts) if v.has("CHECK_ERROR")] == [25]
    assert "worker process died" in verdicts[25].symbols["CHECK_ERROR"].options[0]
    assert verdicts[30].action == "reject" and verdicts[7].action == "no action"


def test_scan_many_reads_its_input_as_it_goes():
    consumed = 0

    def items():
        nonlocal consumed
        for i in range(2000):
            consumed += 1
            yield numbered(i)

    it = Engine(checks=[GtubeCheck()]).scan_many(items(), workers=2, chunksize=4)
    first = next(it)
    assert first.subject == "m0" and consumed < 200   # ProcessPoolExecutor.map read all 2000 first
    assert sum(1 for _ in it) == 1999


def test_cli_scan_with_a_dying_worker_loses_no_message(tmp_path, capsys, monkeypatch):
    import antispam.cli as cli

    for i in range(30):
        (tmp_path / f"{i:02d}.eml").write_bytes(numbered(i, b"KILLME" if i == 12 else b"hello"))
    monkeypatch.setattr(cli, "_engine", lambda args: Engine(checks=[GtubeCheck(), CrashOn()]))
    code, out, err = run(capsys, "scan", "--json", "-j", "2", "--no-progress", str(tmp_path))
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [Path(r["file"]).name for r in rows] == [f"{i:02d}.eml" for i in range(30)]
    assert [i for i, r in enumerate(rows) if "CHECK_ERROR" in r["symbols"]] == [12]
    assert "30 message(s) scanned" in err and "Traceback" not in err


def test_cli_scan_streams_messages(monkeypatch):
    """The first verdict is written before the third message is read (not after reading them all)."""
    import antispam.corpus as corpus

    out = io.StringIO()
    lines_when_read: list[int] = []

    def fake_iter(paths, max_bytes=None):
        for i in range(5):
            lines_when_read.append(out.getvalue().count("\n"))
            yield corpus.Item(f"m{i}", numbered(i))

    monkeypatch.setattr(corpus, "iter_messages", fake_iter)
    monkeypatch.setattr(sys, "stdout", out)
    assert main(["scan", "--no-progress", "unused"]) == 0
    assert lines_when_read[2] >= 1 and out.getvalue().count("\n") == 5


def test_cli_scan_passes_the_size_limit_to_the_reader(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[limits]\nmax_bytes = 1000\n")
    (tmp_path / "big.eml").write_bytes(numbered(1) + b"x" * 5000)
    code, out, _ = run(capsys, "-c", str(cfg), "scan", "--json", str(tmp_path / "big.eml"))
    assert code == 0 and "SCAN_LIMIT" in json.loads(out)["symbols"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file names are bytes")
def test_non_utf8_file_names_under_a_strict_utf8_stdout(tmp_path, monkeypatch):
    d = tmp_path / "nonutf"
    d.mkdir()
    (d / os.fsdecode(b"m\xff.eml")).write_bytes(numbered(1))
    (d / os.fsdecode(b"gone\xfe.eml")).symlink_to(d / "missing")   # an error line with such a name, too
    for json_flag in ([], ["--json"]):
        raw = io.BytesIO()
        strict = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline="\n")
        monkeypatch.setattr(sys, "stdout", strict)
        assert main(["scan", "--no-progress", *json_flag, str(d)]) == 0
        strict.flush()
        text = raw.getvalue().decode("utf-8")
        monkeypatch.undo()
        if json_flag:  # valid Unicode: no lone surrogate
            files = [json.loads(line)["file"] for line in text.splitlines()]
        else:
            files = [line.split("\t")[0] for line in text.splitlines()]
        assert sorted(Path(f).name for f in files) == ["gone\\xfe.eml", "m\\xff.eml"]


def test_unreadable_inputs_exit_1_and_errors_are_one_line_each(tmp_path, capsys):
    (tmp_path / "junk.tar.gz").write_bytes(b"not an archive\n" * 20)
    code, out, err = run(capsys, "scan", "--no-progress", str(tmp_path / "junk.tar.gz"), str(tmp_path / "nope.eml"))
    assert code == 1 and len(out.splitlines()) == 2 and all(l.split("\t")[1] == "error" for l in out.splitlines())
    assert "2 unreadable" in err


# ----------------------------------------------------------------------------- network prefetch


class NetCheck(Check):
    name = "netcheck"
    network = True
    symbols = (SymbolDef("NET_DONE", 1.0, "finished"),)

    def questions(self, msg, ctx):
        return [Question("net.test.", "TXT")]

    async def arun(self, msg, ctx):
        return [Hit("NET_DONE")]


class BrokenResolver:
    """A resolver whose prefetch fails the way a nameserver given as a host name made dnspython fail."""

    async def prefetch(self, questions):
        raise ValueError("nameserver is not an IP address")

    def close(self):
        pass


def test_a_failing_dns_prefetch_is_a_check_error_not_an_exception():
    e = Engine(checks=[NetCheck(), GtubeCheck()], resolver=BrokenResolver())
    v = e.scan(b"From: a@example.com\nSubject: x\n\n" + GTUBE + b"\n")
    assert v.action == "reject" and v.has("NET_DONE") and v.has("CHECK_ERROR")
    assert "dns_prefetch: ValueError" in v.symbols["CHECK_ERROR"].options[0]


# ----------------------------------------------------------------------------- train / rules mistakes


def test_train_and_rules_on_a_missing_corpus_are_clear_errors(tmp_path, capsys):
    pytest.importorskip("sklearn")
    for argv in (["train", "--manifest", str(tmp_path / "nope"), "-o", str(tmp_path / "m")],
                 ["rules", "stats", str(tmp_path / "nope")],
                 ["rules", "fit", "--corpus", str(tmp_path / "nope")]):
        code, _, err = run(capsys, *argv)
        assert code == 2 and "MANIFEST.tsv" in err, argv
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "MANIFEST.tsv").write_text("set\tfile\tlabel\tsha256\nspam1\ta\tspam\t" + "0" * 64 + "\n")
    code, _, err = run(capsys, "train", "--manifest", str(tmp_path / "c"), "-o", str(tmp_path / "m"))
    assert code == 2 and "spam1.tar.gz is missing" in err


def test_rules_load_sa_on_a_missing_directory_fails(tmp_path, capsys):
    code, _, err = run(capsys, "rules", "load-sa", str(tmp_path / "nope"), "--pre", str(tmp_path))
    assert code == 2 and "no such file or directory" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "rules", "load-sa", str(tmp_path / "empty"), "--pre", str(tmp_path))
    assert code == 2 and "no rule files" in err


@pytest.mark.parametrize("option", [["--bits", "0"], ["--bits", "32"], ["--target-fpr", "nan"], ["--target-fpr", "-1"]])
def test_train_rejects_out_of_range_options(tmp_path, capsys, option):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--spam", str(tmp_path), "--ham", str(tmp_path), "-o", str(tmp_path / "m"), *option])
    assert exc.value.code == 2 and "out of range" in capsys.readouterr().err


def test_train_refuses_an_output_that_is_a_file_before_training(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from test_classifier import HAM, SPAM

    for name, msgs in (("spam", SPAM), ("ham", HAM)):
        (tmp_path / name).mkdir()
        for i, raw in enumerate(msgs):
            (tmp_path / name / f"{i}.eml").write_bytes(raw)
    (tmp_path / "afile").write_text("")
    code, _, err = run(capsys, "train", "--spam", str(tmp_path / "spam"), "--ham", str(tmp_path / "ham"),
                       "-o", str(tmp_path / "afile"), "--bits", "12")
    assert code == 2 and "is not a directory" in err and "trained" not in err
