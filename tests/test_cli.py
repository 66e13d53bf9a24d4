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
