"""Engine: check protocol, error isolation, network phase and deadline, batches, policy, verdicts."""

from __future__ import annotations

import asyncio
import json

import pytest

from antispam import Check, Config, Engine, Envelope, Hit, Question, SymbolDef
from antispam.builtin import GTUBE, GtubeCheck, MimeDefectsCheck
from antispam.check import ScanContext
from antispam.resources import samples_dir
from antispam.config import ConfigError

HAM = b"From: a@b.example\nSubject: lunch\n\nSee you at noon.\n"


def builtin_engine(config=None):
    """An engine with only the built-in checks: for tests of engine mechanics."""
    return Engine(config, checks=[GtubeCheck(), MimeDefectsCheck()])
SPAM = b"From: x@y.example\nSubject: test\n\n" + GTUBE + b"\n"


def test_default_engine_scans_and_flags_gtube():
    e = Engine()
    v = e.scan(SPAM)
    assert v.action == "reject" and v.is_spam and v.has("GTUBE")
    h = e.scan((samples_dir() / "ham-meeting.eml").read_bytes())
    assert not h.is_spam and not h.has("GTUBE")
    assert "gtube" in h.timings and "total" in h.timings
    b = builtin_engine().scan(HAM)
    assert b.action == "no action" and b.score == 0.0 and not b.symbols


def test_gtube_found_inside_base64_part():
    import base64
    raw = b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(b"hello " + GTUBE)
    assert Engine().scan(raw).has("GTUBE")
    # Header names are case-insensitive.
    raw = b"CONTENT-TRANSFER-ENCODING: base64\n\n" + base64.encodebytes(b"hello " + GTUBE)
    assert builtin_engine().scan(raw).has("GTUBE")


def test_default_engine_has_no_network_checks():
    e = Engine()
    assert e.network_checks == [] and e.resolver is None


class Boom(Check):
    name = "boom"
    symbols = (SymbolDef("BOOM", 1.0, "never", "test"),)

    def run(self, msg, ctx):
        raise ValueError("kaput")


class Words(Check):
    """Emits one symbol per configured word found in the text (a graded weight when repeated)."""

    name = "words"
    symbols = (SymbolDef("WORD_CASH", 2.0, "mentions cash", "words"), SymbolDef("WORD_FREE", 3.0, "mentions free", "words"),
               SymbolDef("WORD_NICE", -1.5, "mentions a meeting", "nice"))

    def run(self, msg, ctx):
        text = msg.text.lower()
        out = []
        if "cash" in text:
            out.append(Hit("WORD_CASH", float(text.count("cash")), ("cash",)))
        if "free" in text:
            out.append(Hit("WORD_FREE"))
        if "meeting" in text:
            out.append(Hit("WORD_NICE"))
        return out


def test_check_error_is_isolated():
    e = Engine(checks=[Boom(), Words()])
    v = e.scan(b"Subject: x\n\nfree cash")
    assert v.has("CHECK_ERROR") and "boom: ValueError: kaput" in v.symbols["CHECK_ERROR"].options[0]
    assert v.has("WORD_FREE") and v.has("WORD_CASH")


def test_weights_scores_overrides_and_actions():
    cfg = Config.load(overrides={"scores": {"WORD_FREE": 10}, "actions": {"reject": 12, "greylist": 1}})
    e = Engine(cfg, checks=[Words()])
    v = e.scan(b"Subject: x\n\ncash cash free")
    assert v.symbols["WORD_CASH"].score == 4.0  # 2.0 x weight 2
    assert v.symbols["WORD_FREE"].score == 10.0
    assert v.score == 14.0 and v.action == "reject"
    assert e.scan(b"\n\ncash").action == "greylist"  # 2.0: above greylist 1, below add header 5
    assert e.scan(b"\n\nmeeting").score == -1.5


def test_group_caps_scale_members():
    cfg = Config.load(overrides={"groups": {"words": {"max_score": 3.0}}})
    v = Engine(cfg, checks=[Words()]).scan(b"\n\ncash free meeting")
    assert round(v.symbols["WORD_CASH"].score + v.symbols["WORD_FREE"].score, 6) == 3.0
    assert v.symbols["WORD_NICE"].score == -1.5 and round(v.score, 6) == 1.5


def test_disabled_checks():
    cfg = Config.load(overrides={"engine": {"disabled_checks": ["gtube"]}})
    assert not Engine(cfg).scan(SPAM).has("GTUBE")


class FactWriter(Check):
    name = "writer"

    def run(self, msg, ctx):
        ctx.publish(Fact(len(msg.text)))
        return ()


class Fact:
    def __init__(self, n):
        self.n = n


class FactReader(Check):
    name = "reader"
    requires = ("writer",)
    symbols = (SymbolDef("LONG", 1.0, "long text"),)

    def run(self, msg, ctx):
        f = ctx.get(Fact)
        return [Hit("LONG", options=(str(f.n),))] if f and f.n > 3 else []


def test_requires_orders_checks_and_facts_flow():
    e = Engine(checks=[FactReader(), FactWriter()])
    assert [c.name for c in e.checks] == ["writer", "reader"]
    v = e.scan(b"\nlong enough")
    assert v.symbols["LONG"].options == ("11",)


class FakeResolverServedFromMemory:
    """A resolver holding fixed answers; records prefetches.  Network I/O is tested in test_dns."""

    def __init__(self):
        self.prefetched: list[Question] = []

    async def prefetch(self, questions):
        self.prefetched.extend(questions)


class SlowNet(Check):
    name = "slow"
    network = True
    symbols = (SymbolDef("SLOW_DONE", 1.0, "finished"),)

    def questions(self, msg, ctx):
        return [Question("slow.test.", "A")]

    async def arun(self, msg, ctx):
        await asyncio.sleep(5)
        return [Hit("SLOW_DONE")]


class FastNet(Check):
    name = "fast"
    network = True
    symbols = (SymbolDef("FAST_DONE", 1.0, "finished"),)

    def questions(self, msg, ctx):
        return [Question("fast.test.", "TXT")]

    async def arun(self, msg, ctx):
        ctx.add_auth_result("x-test=pass")
        return [Hit("FAST_DONE")]


def test_network_phase_prefetches_and_honours_deadline():
    r = FakeResolverServedFromMemory()
    cfg = Config.load(overrides={"engine": {"scan_deadline": 0.3, "authserv_id": "mx.test"}})
    e = Engine(cfg, checks=[SlowNet(), FastNet()], resolver=r)
    v = e.scan(HAM)
    assert {q.qname for q in r.prefetched} == {"slow.test.", "fast.test."}
    assert v.has("FAST_DONE") and not v.has("SLOW_DONE")
    assert v.symbols["CHECK_TIMEOUT"].options == ("slow",)
    assert v.timings["total"] < 2
    assert v.authentication_results == "mx.test; x-test=pass"
    assert ("Authentication-Results", "mx.test; x-test=pass") in v.headers()


def test_scan_inside_loop_with_network_checks_points_to_ascan():
    e = Engine(checks=[FastNet()], resolver=FakeResolverServedFromMemory())

    async def inner():
        with pytest.raises(RuntimeError, match="ascan"):
            e.scan(HAM)
        return await e.ascan(HAM)

    assert asyncio.run(inner()).has("FAST_DONE")


def test_scan_many_keeps_order_in_processes(tmp_path):
    p = tmp_path / "m.eml"
    p.write_bytes(SPAM)
    items = [HAM, SPAM, str(p), str(tmp_path / "missing.eml"), (HAM, Envelope(client_ip="192.0.2.1"))] * 3
    seq = [v.action for v in builtin_engine().scan_many(items)]
    par = [v.action for v in builtin_engine().scan_many(items, workers=2, chunksize=2)]
    assert seq == par == ["no action", "reject", "reject", "no action", "no action"] * 3
    full_seq = [(v.action, v.score) for v in Engine().scan_many(items)]
    full_par = [(v.action, v.score) for v in Engine().scan_many(items, workers=2, chunksize=2)]
    assert full_seq == full_par
    missing = list(Engine().scan_many([str(tmp_path / "missing.eml")]))[0]
    assert missing.has("INPUT_ERROR")


def test_verdict_shapes():
    v = builtin_engine().scan(SPAM)
    d = json.loads(json.dumps(v.to_dict()))
    assert d["action"] == "reject" and d["score"] == 1000.0 and d["required_score"] == 5.0
    assert d["symbols"]["GTUBE"]["score"] == 1000.0 and d["symbols"]["GTUBE"]["description"]
    hdr = dict(v.headers())
    assert hdr["X-Spam-Flag"] == "YES"
    assert hdr["X-Spam-Status"].startswith("Yes, score=1000.0 required=5.0 tests=GTUBE ")
    assert dict(builtin_engine().scan(HAM).headers())["X-Spam-Flag"] == "NO"


def test_rewrite_subject_action():
    cfg = Config.load(overrides={"actions": {"rewrite subject": 1.0}})
    v = Engine(cfg, checks=[Words()]).scan(b"Subject: offer\n\nfree")
    assert v.action == "rewrite subject" and v.rewritten_subject() == "***SPAM*** offer"
    assert v.to_dict()["subject"] == "***SPAM*** offer"


def test_scan_limit_symbol():
    cfg = Config.load(overrides={"limits": {"max_bytes": 100}})
    v = Engine(cfg).scan(b"Subject: x\n\n" + b"y" * 500)
    assert v.has("SCAN_LIMIT") and v.skipped == ("bytes>100",)
    links = " ".join(f"http://h{i}.example/" for i in range(40))
    v = Engine(Config.load(overrides={"limits": {"max_urls": 25}})).scan(f"Subject: x\n\n{links}\n".encode())
    assert v.has("SCAN_LIMIT") and v.skipped == ("urls>25",)


def test_mime_defects_become_symbols():
    v = Engine().scan(b"Content-Type: multipart/mixed\n\nx")
    assert v.has("MIME_MISSING_BOUNDARY") and v.symbols["MIME_MISSING_BOUNDARY"].score > 0


def test_config_errors_name_key_and_file(tmp_path):
    f = tmp_path / "site.toml"
    f.write_text("[engine]\nscan_deadline = 'soon'\n")
    with pytest.raises(ConfigError) as ei:
        Engine.from_config(f)
    assert "engine.scan_deadline" in str(ei.value) and str(f) in str(ei.value)
    f.write_text("[enigne]\n")
    with pytest.raises(ConfigError, match="enigne"):
        Engine.from_config(f)
    f.write_text("[actions]\nrejekt = 3\n")
    with pytest.raises(ConfigError, match="actions.rejekt"):
        Engine.from_config(f)
    f.write_text("[groups.x]\nmax = 3\n")
    with pytest.raises(ConfigError, match="groups.x.max"):
        Engine.from_config(f)
    f.write_text("not toml ===")
    with pytest.raises(ConfigError, match="invalid TOML"):
        Engine.from_config(f)
    with pytest.raises(ConfigError, match="not found"):
        Engine.from_config(tmp_path / "nope.toml")


def test_config_layers(tmp_path):
    f = tmp_path / "site.toml"
    f.write_text("[scores]\nGTUBE = 50\n[actions]\nreject = 40\ngreylist = false\n")
    cfg = Config.load(f, overrides={"actions": {"reject": 45}})
    assert cfg.scores["GTUBE"] == 50 and cfg.actions["reject"] == 45 and cfg.actions["greylist"] is None
    assert cfg.sources == ("<defaults>", str(f), "<overrides>")
    v = builtin_engine(cfg).scan(SPAM)
    assert v.score == 50 and v.action == "reject"


def test_context_facts_are_typed():
    ctx = ScanContext(Envelope(), Config())
    assert ctx.get(Fact) is None and ctx.remaining() is None
    ctx.publish(Fact(3))
    assert ctx.get(Fact).n == 3


def test_profiles_and_per_recipient_verdicts(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text(
        "[profiles.strict]\nactions = { reject = 3.0, \"add header\" = 1.0 }\nscores = { WORD_FREE = 4.0 }\n"
        "[profiles.lenient]\nactions = { \"add header\" = 50.0, reject = 100.0 }\n"
        "[recipients]\n\"ceo@corp.example\" = \"strict\"\n\"@sales.corp.example\" = \"lenient\"\n")
    e = Engine(Config.load(f), checks=[Words()])
    raw = b"Subject: deal\n\nfree cash cash\n"   # WORD_FREE 3 + WORD_CASH 2x2 = 7
    assert e.scan(raw).action == "add header"
    assert e.scan(raw, profile="strict").action == "reject" and e.scan(raw, profile="strict").score == 8.0
    per = e.scan_per_recipient(raw, Envelope(rcpt_tos=("CEO@corp.example", "bob@sales.corp.example", "x@other.example")))
    assert {r: v.action for r, v in per.items()} == {
        "CEO@corp.example": "reject", "bob@sales.corp.example": "no action", "x@other.example": "add header"}
    with pytest.raises(ConfigError, match="profiles.nope"):
        e.scan(raw, profile="nope")


def test_recipient_naming_an_undefined_profile_is_an_error():
    with pytest.raises(ConfigError, match="recipients.a@b.example"):
        Config.load(overrides={"recipients": {"a@b.example": "ghost"}})
    with pytest.raises(ConfigError, match="profiles.p.colour"):
        Config.load(overrides={"profiles": {"p": {"colour": 1}}})


def test_default_engine_makes_no_network_lookup(monkeypatch):
    """Building and using the default engine touches no resolver: every socket lookup call fails."""
    import socket

    def forbidden(*a, **k):
        raise AssertionError(f"network lookup attempted: {a}")

    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getfqdn", "create_connection"):
        monkeypatch.setattr(socket, name, forbidden)
    e = Engine()
    v = e.scan((samples_dir() / "spam-phish.eml").read_bytes(), Envelope(client_ip="203.0.113.9", helo="x.example",
                                                                         mail_from="a@b.example"))
    assert v.is_spam and e.resolver is None and e.network_checks == []


def test_scan_many_workers_start_from_this_engine_learning_included(tmp_path):
    """Where the platform forks, pool workers are copies of the engine that calls scan_many, so
    they scan with what it has learnt (workers built afresh from the configuration would not);
    an engine that cannot cross a fork (an SQLite store) still gets workers of its own, which
    scan as it does."""
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("the platform does not fork")
    ham = b"From: ana@example.org\nTo: bo@example.net\nSubject: minutes of the meeting\n\n" \
          b"Dear all, the minutes of tuesday's meeting are below; the next one is on friday.\n"
    e = Engine()
    e.learn(b"From: bo@example.net\nSubject: invoice\n\nYour invoice for November is attached.\n", spam=False)
    before = e.scan(ham).score
    for _ in range(3):
        e.learn(ham + b"x" * _, spam=True)  # three different messages: each counts
    learnt = e.scan(ham).score
    assert learnt > before  # the learning moved the score, so the comparison below can fail
    assert e._forkable()
    assert [v.score for v in e.scan_many([ham] * 4, workers=2, chunksize=1)] == [learnt] * 4
    stored = Engine(Config.load(None, {"store": {"url": f"sqlite:///{tmp_path / 's.db'}"}}))
    assert not stored._forkable()
    assert [v.score for v in stored.scan_many([ham, SPAM], workers=2, chunksize=1)] == \
        [stored.scan(ham).score, stored.scan(SPAM).score]


def test_the_configuration_can_score_a_rule_its_files_score_zero():
    """``rules/scores.cf`` scores AS_ACT_NOW 0, so the rule is not even run; a ``[scores]`` entry (or a
    profile's) brings it back, scored as configured, where it used to have no effect and no error."""
    raw = b"From: a@b.example\nSubject: act now\n\nAct now!\n"
    assert "AS_ACT_NOW" not in Engine().scan(raw).symbols
    v = Engine(Config.load(overrides={"scores": {"AS_ACT_NOW": 3.0}})).scan(raw)
    assert v.symbols["AS_ACT_NOW"].score == 3.0
    e = Engine(Config.load(overrides={"profiles": {"strict": {"scores": {"AS_ACT_NOW": 2.5}}}}))
    assert e.scan(raw, profile="strict").symbols["AS_ACT_NOW"].score == 2.5
    assert e.scan(raw).symbols["AS_ACT_NOW"].score == 0.0      # the base profile keeps the files' 0


class _ThreadHandOff(Check):
    """A network check that hands work to a thread three times (as a check wrapping a blocking
    library would): each hand-off needs the event loop woken by the thread."""

    name = "handoff"
    network = True
    symbols = (SymbolDef("HANDOFF_DONE", 0.0, "the thread hand-offs completed", "test"),)

    async def arun(self, msg, ctx):
        for _ in range(3):
            await asyncio.to_thread(int)
        return [Hit("HANDOFF_DONE", 1.0)]


def test_private_loops_do_not_cross_a_fork():
    """A prefork MTA hook: an engine built, used, then os.fork(); parent and child go on scanning.
    The child used to run its scans on the parent's loop (one whose executor threads it does not
    have: every hand-off waited for the deadline, CHECK_TIMEOUT), and closing that copy took the
    wake-up socket out of the epoll instance it shares with the parent, so the parent's next scans
    slept to their deadline too."""
    import os

    if not hasattr(os, "fork"):
        pytest.skip("the platform does not fork")
    e = Engine(Config.load(overrides={"engine": {"scan_deadline": 2.0}}), checks=[_ThreadHandOff()])
    assert "HANDOFF_DONE" in e.scan(b"Subject: x\n\nbefore the fork\n").symbols
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            got = ",".join(sorted(e.scan(b"Subject: x\n\nin the child\n").symbols))
            e.close()  # what a child exiting normally does (or its interpreter, at exit)
            os.write(w, got.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        child = f.read().decode()
    os.waitpid(pid, 0)
    assert child == "HANDOFF_DONE"
    for _ in range(2):
        assert set(e.scan(b"Subject: x\n\nafter the fork\n").symbols) == {"HANDOFF_DONE"}
    e.close()


def test_a_closed_engine_says_so():
    """close() is idempotent, and a scan, batch or learn after it is a clear error: a scan used to go
    on, on a private event loop made anew that nothing would close again, with the store reopened."""
    e = Engine(Config.load(overrides={"engine": {"scan_deadline": 2.0}}), checks=[_ThreadHandOff()])
    assert "HANDOFF_DONE" in e.scan(b"Subject: x\n\nhi\n").symbols
    e.close()
    e.close()
    with pytest.raises(RuntimeError, match=r"Engine\.scan\(\) after Engine\.close\(\)"):
        e.scan(b"Subject: x\n\nhi\n")
    with pytest.raises(RuntimeError, match=r"Engine\.ascan\(\) after Engine\.close\(\)"):
        asyncio.run(e.ascan(b"Subject: x\n\nhi\n"))
    with pytest.raises(RuntimeError, match=r"Engine\.scan_many\(\) after Engine\.close\(\)"):
        list(e.scan_many([b"Subject: x\n\nhi\n"]))
    with pytest.raises(RuntimeError, match=r"Engine\.learn\(\) after Engine\.close\(\)"):
        e.learn(b"Subject: x\n\nhi\n", spam=True)
    with pytest.raises(RuntimeError, match=r"Engine\.unlearn\(\) after Engine\.close\(\)"):
        e.unlearn(b"Subject: x\n\nhi\n")
    assert not e._all_loops  # no loop made again


def test_a_loop_closed_before_a_fork_is_left_alone_in_the_child():
    """An engine closed before the fork leaves its (closed) loop object behind while its thread lives;
    detaching it in the child asked its closed selector for a descriptor (ValueError), which ended the
    at-fork hook before the loops after it were detached."""
    from antispam.engine import _ThreadLoop

    held = _ThreadLoop()
    held.loop.close()
    held.detach()  # what the at-fork hook does in the child, for each loop
    assert held.loop.is_closed()
