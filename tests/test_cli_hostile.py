"""Hostile input to the command line: bad flags, configuration files, model directories, labelled
corpora and store URLs get one line on stderr and a documented exit status, never a traceback, a
hang or a read until memory runs out.  Each test is a defect a campaign of hostile runs found."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from antispam.cli import main
from antispam.resources import default_models_dir, samples_dir

GTUBE = str(samples_dir() / "gtube.eml")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def usage_error(capsys, *argv) -> str:
    """Run a command that must fail as a usage error (argparse: SystemExit 2); its stderr."""
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    assert info.value.code == 2
    return capsys.readouterr().err


# ---------------------------------------------------------------- scan flags


@pytest.mark.parametrize("flags", [["-j", "99999999999999999999"], ["-j", "-1"], ["-j", "100000"], ["--top", "-5"]])
def test_scan_counts_out_of_range_are_usage_errors(capsys, flags):
    # -j past a C int crashed the process pool (OverflowError traceback); -j -1 silently meant one
    # worker per core; --top -5 silently showed all but the last five symbols
    err = usage_error(capsys, "scan", *flags, GTUBE)
    assert "out of range" in err or "negative" in err
    assert "Traceback" not in err


def test_scan_top_zero_and_j_zero_still_work(capsys):
    code, out, _ = run(capsys, "scan", "-j", "0", "--top", "0", GTUBE)
    assert code == 0 and out.rstrip("\n").endswith("\t")


# ---------------------------------------------------------------- model directories


def _model_copy(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    shutil.copytree(default_models_dir() / "default", d)
    return d


def _config_for_model(tmp_path: Path, d: Path) -> Path:
    c = tmp_path / "c.toml"
    c.write_text(f'[classifier]\nmodel = "{d}"\n')
    return c


def test_model_json_nested_too_deep_is_a_model_error(tmp_path, capsys):
    d = _model_copy(tmp_path)
    (d / "model.json").write_text("[" * 100_000 + "]" * 100_000)
    code, _, err = run(capsys, "-c", _config_for_model(tmp_path, d), "scan", GTUBE)
    assert code == 2 and "Traceback" not in err
    assert "model.json: unreadable model metadata" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("kind", ["fifo", "devzero"])
def test_model_array_that_is_no_regular_file_is_refused(tmp_path, capsys, kind):
    # a FIFO hung the load for ever; a link to /dev/zero read until memory ran out
    d = _model_copy(tmp_path)
    (d / "weights.npy").unlink()
    if kind == "fifo":
        os.mkfifo(d / "weights.npy")
    else:
        os.symlink("/dev/zero", d / "weights.npy")
    code, _, err = run(capsys, "-c", _config_for_model(tmp_path, d), "scan", GTUBE)
    assert code == 2 and "weights.npy: unreadable: not a regular file" in err


def test_model_json_fifo_is_refused(tmp_path, capsys):
    d = _model_copy(tmp_path)
    (d / "model.json").unlink()
    os.mkfifo(d / "model.json")
    code, _, err = run(capsys, "-c", _config_for_model(tmp_path, d), "checks")
    assert code == 2 and "not a regular file" in err


def test_model_vocab_values_must_be_strings(tmp_path, capsys):
    d = _model_copy(tmp_path)
    meta = json.loads((d / "model.json").read_text())
    meta["vocab"] = {"1": {"a": [1]}}
    (d / "model.json").write_text(json.dumps(meta))
    code, _, err = run(capsys, "-c", _config_for_model(tmp_path, d), "scan", GTUBE)
    assert code == 2 and "vocab values must be token strings" in err


# ---------------------------------------------------------------- configuration and auth input


def test_config_that_never_ends_is_refused(capsys):
    # -c /dev/zero read until memory ran out (MemoryError traceback)
    code, _, err = run(capsys, "-c", "/dev/zero", "config")
    assert code == 2 and "larger than" in err and "Traceback" not in err


def test_auth_reads_at_most_max_bytes(tmp_path, capsys):
    # `antispam auth /dev/zero` read until memory ran out; it now reads [limits] max_bytes + 1
    c = tmp_path / "c.toml"
    c.write_text("[limits]\nmax_bytes = 1000\n")
    code, _, err = run(capsys, "-c", c, "auth", "/dev/zero", "--nameserver", "127.0.0.1#1")
    assert code == 0 and "Traceback" not in err


def test_a_leading_from_line_does_not_count_against_max_bytes():
    """``auth`` read max_bytes + 1 bytes counting a leading mbox ``From `` line, which Message drops before
    it measures: a message of exactly max_bytes after such a line was cut (its body hash then fails)."""
    from antispam.corpus import read_message

    msg = b"Subject: x\n\n" + b"a" * 88
    assert read_message(io.BytesIO(b"From ann@example.com Mon Dec  7 10:00:00 2026\n" + msg + b"tail"), 101) \
        == b"From ann@example.com Mon Dec  7 10:00:00 2026\n" + msg + b"t"
    assert read_message(io.BytesIO(msg + b"tail"), 101) == msg + b"t"
    assert read_message(io.BytesIO(b"From: ann@example.com\n" + msg), 10) == b"From: ann@example.com\n"


# ---------------------------------------------------------------- labelled corpora


def _corpus(tmp_path: Path) -> Path:
    c = tmp_path / "corpus"
    c.mkdir()
    data = Path(GTUBE).read_bytes()
    (c / "MANIFEST.tsv").write_text(f"set\tfile\tlabel\tsha256\ns\tm1\tspam\t{hashlib.sha256(data).hexdigest()}\n")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        ti = tarfile.TarInfo("s/m1")
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    (c / "s.tar.gz").write_bytes(buf.getvalue())
    return c


@pytest.mark.parametrize("name", ["MANIFEST.tsv", "s.tar.gz"])
def test_corpus_fifo_is_refused_not_waited_on(tmp_path, capsys, name):
    # eval --corpus / train --manifest waited for ever for a writer on a FIFO in the corpus
    c = _corpus(tmp_path)
    (c / name).unlink()
    os.mkfifo(c / name)
    code, _, err = run(capsys, "eval", "--corpus", c, "--model", "default", "--no-engine", "--no-progress")
    assert code == 2 and "not a regular file (FIFO)" in err
    code, _, err = run(capsys, "train", "--manifest", c, "-o", tmp_path / "out", "--bits", "16")
    assert code == 2 and "not a regular file (FIFO)" in err


def test_corpus_missing_set_still_named_missing(tmp_path, capsys):
    c = _corpus(tmp_path)
    (c / "s.tar.gz").unlink()
    code, _, err = run(capsys, "eval", "--corpus", c, "--model", "default", "--no-engine", "--no-progress")
    assert code == 2 and "s.tar.gz is missing" in err


# ---------------------------------------------------------------- store URLs


@pytest.mark.parametrize("url, says", [
    ("redis://127.0.0.1:99999/0", "the port must be a number"),
    ("redis://127.0.0.1:x", "the port must be a number"),
    ("redis://127.0.0.1:1/abc", "the database after the host must be a number"),
    ("sqlite:///tmp/a\\u0000b", "NUL"),
])
def test_malformed_store_url_is_a_config_error(tmp_path, capsys, url, says):
    # redis-py's and sqlite3's ValueErrors escaped as tracebacks; a database name was ignored
    c = tmp_path / "c.toml"
    c.write_text(f'[store]\nurl = "{url}"\n')
    for cmd in (["scan", GTUBE], ["learn", "--spam", GTUBE]):
        code, _, err = run(capsys, "-c", c, *cmd)
        assert code == 2 and says in err and "store.url" in err and "Traceback" not in err


# ---------------------------------------------------------------- eval options


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_eval_target_fpr_must_be_a_rate(capsys, tmp_path, value):
    # nan and inf crashed the report at the end of the run (ValueError / OverflowError traceback)
    err = usage_error(capsys, "eval", "--corpus", _corpus(tmp_path), "--target-fpr", value)
    assert "out of range" in err


@pytest.mark.parametrize("where", ["dir", "under_file", "proc"])
def test_eval_report_path_that_cannot_be_written(capsys, tmp_path, where):
    # a --json naming a directory or under a missing /proc path crashed after the run (traceback)
    c = _corpus(tmp_path)
    out = {"dir": tmp_path, "under_file": c / "MANIFEST.tsv" / "r.json", "proc": Path("/proc/nope/r.json")}[where]
    code, _, err = run(capsys, "eval", "--corpus", c, "--model", "default", "--no-engine", "--no-progress",
                       "--json", out)
    assert code == 2 and err.startswith("antispam eval: ") and len(err.strip().splitlines()) == 1


def test_eval_empty_corpus_argument_is_not_the_default_corpus(capsys, tmp_path, monkeypatch):
    # --corpus '' (an unset shell variable) silently evaluated the default corpus
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "eval", "--corpus", "", "--no-progress")
    assert code == 2 and "MANIFEST.tsv" in err


# ---------------------------------------------------------------- limits


def test_huge_max_bytes_is_not_allocated_up_front(tmp_path, capsys):
    # every read asked for max_bytes + 1 bytes at once: MemoryError / OverflowError tracebacks
    c = tmp_path / "c.toml"
    c.write_text("[limits]\nmax_bytes = 9223372036854775807\n")
    code, out, err = run(capsys, "-c", c, "scan", GTUBE)
    assert code == 0 and "\treject\t" in out and "Traceback" not in err
    code, _, err = run(capsys, "-c", c, "auth", GTUBE, "--nameserver", "127.0.0.1#1")
    assert code == 0


@pytest.mark.parametrize("text", ['[rules]\ncache_dir = "\\u0000"\n', '[classifier]\nmodel = "a\\u0000b"\n',
                                  '[rules]\ndirs = ["a\\u0000"]\n'])
def test_file_name_with_nul_is_a_config_error(tmp_path, capsys, text):
    # the file functions refused it with a bare ValueError: a traceback
    c = tmp_path / "c.toml"
    c.write_text(text)
    code, _, err = run(capsys, "-c", c, "scan", GTUBE)
    assert code == 2 and "NUL character" in err and "Traceback" not in err


def test_empty_path_is_not_the_current_directory(tmp_path, capsys, monkeypatch):
    # Path("") is ".": `antispam scan ""` scanned every file under the current directory
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.eml").write_bytes(Path(GTUBE).read_bytes())
    code, out, _ = run(capsys, "scan", "")
    assert code == 1 and out == "\terror\tcannot read: an empty path names no file\n"


@pytest.mark.parametrize("value", ["5", '"str"', "[1, 2]", "true"])
def test_dnsbl_lists_must_be_a_table(tmp_path, capsys, value):
    # passed the load, then crashed building the engine with an AttributeError traceback
    c = tmp_path / "c.toml"
    c.write_text(f"[dnsbl]\nlists = {value}\n")
    code, _, err = run(capsys, "-c", c, "scan", GTUBE)
    assert code == 2 and "dnsbl.lists" in err and "Traceback" not in err


@pytest.mark.parametrize("text", ["a = " + "[" * 5000 + "]" * 5000 + "\n", "a = " + "{b = " * 2000 + "1" + "}" * 2000 + "\n"])
def test_config_nested_too_deep(tmp_path, capsys, text):
    # tomllib's RecursionError was a traceback
    c = tmp_path / "c.toml"
    c.write_text(text)
    code, _, err = run(capsys, "-c", c, "config")
    assert code == 2 and "nested too deeply" in err


def test_empty_config_argument_is_not_the_defaults(capsys):
    # -c '' silently scanned with the embedded defaults
    code, _, err = run(capsys, "-c", "", "scan", GTUBE)
    assert code == 2 and err.startswith("antispam: ")
