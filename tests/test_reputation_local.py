"""Greylisting, rate limits and reputation history, end to end through Engine, on every store backend."""

from __future__ import annotations

import pytest

from antispam import Config, Engine, Envelope
from antispam.builtin import GTUBE
from antispam.errors import ConfigError
from antispam.message import Message
from antispam.reputation.greylist import GreylistCheck
from antispam.reputation.history import HistoryCheck
from antispam.store import open_store

from .servers import free_port

HAM = (b"From: a@sender.example\nTo: b@rcpt.example\nSubject: hello\nDate: Tue, 24 Nov 2026 10:00:00 +0000\n"
       b"Message-ID: <agenda-1@sender.example>\n\nSee http://www.docs.example.org/page for the agenda.\n")
SPAM = b"From: x@spam.example\nSubject: win\n\nClick http://promo.badlinks.example/x now\n" + GTUBE


class Clock:
    def __init__(self, t=1_800_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


@pytest.fixture
def store(any_store):
    return any_store


def env(ip="198.51.100.7", sender="a@sender.example", rcpts=("bob@rcpt.example",), user=None):
    return Envelope(client_ip=ip, mail_from=sender, rcpt_tos=rcpts, user=user)


# ----------------------------------------------------------------- greylisting

def grey_engine(store, clock, **over):
    cfg = Config.load(overrides={"greylist": {"enabled": True, "delay": 300, **over}})
    return Engine(cfg, checks=[GreylistCheck(cfg, store, clock=clock)], store=store)


def test_greylist_defers_then_passes_after_delay(store):
    clock = Clock()
    e = grey_engine(store, clock)
    v = e.scan(HAM, env())
    assert v.action == "soft reject" and v.has("GREYLIST_DEFER")
    assert v.symbols["GREYLIST_DEFER"].options == ("198.51.100.0/24", "retry in 300s")
    clock.t += 120
    v = e.scan(HAM, env())
    assert v.action == "soft reject" and "retry in 180s" in v.symbols["GREYLIST_DEFER"].options
    clock.t += 200
    v = e.scan(HAM, env())
    assert v.action == "no action" and v.has("GREYLIST_PASS")
    # Known triplet, same /24 but another host of the pool: passes without a new delay.
    v = e.scan(HAM, env(ip="198.51.100.99"))
    assert v.action == "no action" and not v.has("GREYLIST_DEFER") and not v.has("GREYLIST_PASS")
    # Another recipient is a new triplet.
    assert e.scan(HAM, env(rcpts=("carol@rcpt.example",))).action == "soft reject"


def test_greylist_skips_allowed_and_unknown_clients(store):
    e = grey_engine(store, Clock(), allow_networks=["198.51.100.0/24"], allow_domains=["trusted.example"])
    assert e.scan(HAM, env()).action == "no action"
    assert e.scan(HAM, env(ip="203.0.113.1", sender="x@mail.trusted.example")).action == "no action"
    assert e.scan(HAM, Envelope()).action == "no action"          # no client: nothing to defer
    assert e.scan(HAM, env(ip="203.0.113.1")).action == "soft reject"


def test_greylist_content_mode_ignores_envelope(store):
    clock = Clock()
    e = grey_engine(store, clock, mode="content")
    assert e.scan(HAM, env(sender="one@x.example")).action == "soft reject"
    clock.t += 301
    assert e.scan(HAM, env(sender="two@y.example")).has("GREYLIST_PASS")


def test_greylist_reject_still_wins():
    e = grey_engine(open_store("memory://"), Clock())
    cfg = e.config
    full = Engine(cfg, store=e.store)
    assert full.scan(SPAM, env()).action == "reject"


def test_greylist_bad_mode_is_config_error():
    with pytest.raises(ConfigError, match="greylist.mode"):  # refused when the configuration loads
        Engine(Config.load(overrides={"greylist": {"enabled": True, "mode": "sideways"}}))


def test_greylist_store_down_fails_open_or_closed():
    down = f"redis://127.0.0.1:{free_port()}/0"
    for on_failure, action in (("open", "no action"), ("closed", "soft reject")):
        cfg = Config.load(overrides={"greylist": {"enabled": True}, "store": {"url": down, "on_failure": on_failure}})
        v = Engine(cfg).scan(HAM, env())
        assert v.has("STORE_UNAVAILABLE") and v.action == action


# ----------------------------------------------------------------- rate limits

def test_rate_limits_per_key_type(store):
    cfg = Config.load(overrides={"ratelimit": {"enabled": True, "ip_rate": 0.001, "ip_burst": 2,
                                               "rcpt_rate": 0.001, "rcpt_burst": 3, "user_rate": 0.001, "user_burst": 1}})
    e = Engine(cfg, store=store)
    acts = [e.scan(HAM, env()).action for _ in range(3)]
    assert acts == ["no action", "no action", "soft reject"]
    v = e.scan(HAM, env())
    assert v.symbols["RATELIMIT_IP"].options == ("198.51.100.7",)
    # Recipient bob has taken 4 > 3 tokens by now; another IP still sees bob's limit.
    v = e.scan(HAM, env(ip="203.0.113.5"))
    assert v.has("RATELIMIT_RCPT") and not v.has("RATELIMIT_IP")
    v = e.scan(HAM, env(ip="203.0.113.6", rcpts=("new@rcpt.example",), user="alice"))
    assert v.action == "no action"
    v = e.scan(HAM, env(ip="203.0.113.7", rcpts=("new2@rcpt.example",), user="alice"))
    assert v.has("RATELIMIT_USER") and v.symbols["RATELIMIT_USER"].options == ("alice",)


def test_rate_limit_symbol_only_and_allow_list(store):
    cfg = Config.load(overrides={"ratelimit": {"enabled": True, "ip_rate": 0.001, "ip_burst": 1, "action": "",
                                               "allow_networks": ["192.0.2.0/24"]}})
    e = Engine(cfg, store=store)
    e.scan(HAM, env())
    v = e.scan(HAM, env())
    assert v.has("RATELIMIT_IP") and v.action == "no action"
    assert [e.scan(HAM, env(ip="192.0.2.1")).has("RATELIMIT_IP") for _ in range(3)] == [False] * 3


def test_rate_limit_config_errors():
    with pytest.raises(ConfigError, match="ratelimit.action"):
        Engine(Config.load(overrides={"ratelimit": {"enabled": True, "action": "explode"}}))
    with pytest.raises(ConfigError, match="ratelimit.ip_burst"):
        Engine(Config.load(overrides={"ratelimit": {"enabled": True, "ip_rate": 5}}))


@pytest.mark.parametrize("first, retry", [
    ("prvs=1340a1b2c3=news@shop.example", "prvs=1341d4e5f6=news@shop.example"),        # BATV: the day changed
    ("SRS0=ab12=T4=orig.example=ana@fwd.example", "SRS0=cd34=T5=orig.example=ana@fwd.example"),  # SRS timestamp
    ("bounce-88341@list.example", "bounce-88342@list.example"),                         # VERP numbers
    ("list+bounce-x=rcpt.example@lists.example", "list+bounce-y=rcpt.example@lists.example"),
    ("Ana@Sender.Example", "ana@sender.example"),
])
def test_greylist_compares_the_sender_as_it_stays_across_retries(store, first, retry):
    """A retry whose envelope sender carries another day's BATV tag or SRS timestamp, or another VERP
    number, is the same sender: it passes after the delay instead of starting greylisting again."""
    clock = Clock()
    e = grey_engine(store, clock)
    assert e.scan(HAM, env(sender=first)).has("GREYLIST_DEFER")
    clock.t += 400
    v = e.scan(HAM, env(sender=retry))
    assert v.has("GREYLIST_PASS") and v.action == "no action", v.symbols


def test_greylist_keeps_different_senders_apart(store):
    clock = Clock()
    e = grey_engine(store, clock)
    assert e.scan(HAM, env(sender="ana@sender.example")).has("GREYLIST_DEFER")
    clock.t += 400
    for other in ("bob@sender.example", "ana@other.example", "SRS0=ab12=T4=orig.example=bob@fwd.example"):
        assert e.scan(HAM, env(sender=other)).has("GREYLIST_DEFER"), other


# ----------------------------------------------------------------- history

def test_history_learns_from_verdicts_and_decays(store):
    clock = Clock()
    cfg = Config.load(overrides={"history": {"enabled": True, "min_observations": 3, "half_life_days": 1}})
    hist = HistoryCheck(cfg, store, clock=clock)
    from antispam.builtin import GtubeCheck
    e = Engine(cfg, checks=[GtubeCheck(), hist], store=store)
    bad = env(ip="203.0.113.66", sender="x@mail.spam.example")
    for _ in range(3):
        assert not e.scan(SPAM, bad).has("REPUTATION_BAD_IP")
    v = e.scan(SPAM, bad)
    assert v.has("REPUTATION_BAD_IP") and v.has("REPUTATION_BAD_NET") and v.has("REPUTATION_BAD_SENDER_DOMAIN")
    assert v.has("REPUTATION_BAD_URL_DOMAIN") and "badlinks.example" in v.symbols["REPUTATION_BAD_URL_DOMAIN"].options[0]
    assert v.symbols["REPUTATION_BAD_IP"].options[0].startswith("203.0.113.66: spam 3.0 ham 0.0")  # read before this scan is recorded
    # Ham from a clean sender builds good reputation.
    good = env(ip="192.0.2.10", sender="a@sender.example")
    for _ in range(3):
        e.scan(HAM, good)
    assert e.scan(HAM, good).has("REPUTATION_GOOD_IP")
    # Two days later (two half-lives) 5 observations weigh 1.25 < 3: no judgement.
    clock.t += 2 * 86400
    v = e.scan(SPAM, bad)
    assert not v.has("REPUTATION_BAD_IP")


def test_history_learn_counts_once_and_unlearns(store):
    clock = Clock()
    cfg = Config.load(overrides={"history": {"enabled": True, "min_observations": 3, "learn_weight": 3}})
    hist = HistoryCheck(cfg, store, clock=clock)
    e = Engine(cfg, checks=[hist], store=store)
    who = env(ip="203.0.113.80", sender="p@phish.example")
    msg = b"Subject: please\n\nlegit looking text\n"
    assert e.learn(msg, spam=True, envelope=who) == {"history": True}
    assert e.learn(msg, spam=True, envelope=who) == {"history": False}
    v = e.scan(msg, who)
    assert v.has("REPUTATION_BAD_IP") and "spam 3.0" in v.symbols["REPUTATION_BAD_IP"].options[0]
    assert e.unlearn(msg, envelope=who) == {"history": True}
    assert e.unlearn(msg, envelope=who) == {"history": False}
    assert not Engine(cfg, checks=[HistoryCheck(cfg, store, clock=clock)], store=store).scan(msg, who).has("REPUTATION_BAD_IP")


def test_history_forgets_entities_not_seen_for_forget_after_days():
    """Every IP, network and domain ever seen stayed in the store for ever (counts decay, keys did not
    go): the counts and the ledger entries are written with a TTL of forget_after_days, renewed by each
    observation, so an entity seen again stays and one not seen since leaves."""
    from antispam.store.memory import MemoryStore
    clock = Clock()
    store = MemoryStore(clock=clock)
    cfg = Config.load(overrides={"history": {"enabled": True, "forget_after_days": 10}})
    e = Engine(cfg, checks=[HistoryCheck(cfg, store, clock=clock)], store=store)
    for i in range(50):
        e.scan(HAM, env(ip=f"203.0.{i}.9", sender=f"a@sender{i}.example"))
    assert e.learn(HAM + b"learned\n", spam=False, envelope=env()) == {"history": True}
    assert len([k for k in store._data if k.startswith("h:")]) > 100
    clock.t += 9 * 86400
    e.scan(HAM, env(ip="203.0.7.9", sender="a@sender7.example"))   # seen again: renewed
    clock.t += 2 * 86400
    e.scan(HAM, env(ip="198.51.100.1", sender="b@fresh.example"))  # a write purges what expired
    left = {k for k in store._data if k.startswith("h:")}
    assert "h:ip:203.0.7.9:h" in left and "h:ip:198.51.100.1:h" in left
    assert not any(k.startswith(("h:ip:203.0.8.", "h:learned:")) for k in left), sorted(left)
    assert len(left) < 20
    # 0 keeps them for ever.
    cfg = Config.load(overrides={"history": {"enabled": True, "forget_after_days": 0}})
    e = Engine(cfg, checks=[HistoryCheck(cfg, store, clock=clock)], store=store)
    e.scan(HAM, env(ip="192.0.2.200"))
    clock.t += 10_000 * 86400
    e.scan(HAM, env(ip="192.0.2.201"))
    assert "h:ip:192.0.2.200:h" in store._data
    with pytest.raises(ConfigError, match="history.forget_after_days"):
        Config.load(overrides={"history": {"forget_after_days": -1}})


def test_history_counts_a_domain_under_its_a_labels_whichever_way_it_is_written(store):
    """A sender or a link may write a domain in Unicode or as A-labels; counted as written, ``faß.de``
    and ``xn--fa-hia.de`` kept two histories of one domain."""
    cfg = Config.load(overrides={"history": {"enabled": True}})
    hist = HistoryCheck(cfg, store)
    for sender, link in (("a@faß.de", "http://www.faß.de/x"), ("a@xn--fa-hia.de", "http://www.xn--fa-hia.de/x")):
        msg = Message(b"Subject: x\n\nsee " + link.encode() + b"\n", envelope=env(sender=sender))
        ents = dict((k, v) for k, v in hist.entities(msg) if k in ("sdom", "udom"))
        assert ents == {"sdom": "xn--fa-hia.de", "udom": "xn--fa-hia.de"}, (sender, ents)


def test_history_counts_carry_a_ttl_in_every_store(store):
    """The TTL reaches each backend: SQLite's exp column, Redis's EXPIRE, the memory store's expiry."""
    cfg = Config.load(overrides={"history": {"enabled": True}})
    e = Engine(cfg, checks=[HistoryCheck(cfg, store)], store=store)
    e.scan(HAM, env(ip="203.0.113.44"))
    key = "h:ip:203.0.113.44:h"
    kind = type(store).__name__
    if kind == "SqliteStore":
        (exp,), = store._exec("SELECT exp FROM counters WHERE k = ?", (key,)).fetchall()
    elif kind == "RedisStore":
        exp = store._r.ttl(store._k(key))
        exp = exp if exp > 0 else None
    else:
        exp = store._expires.get(key)
    assert exp is not None, kind


def test_history_keys_its_ledger_with_the_message_digests(store, monkeypatch):
    """learn and unlearn read Message.ledger_digests, which the classifier's ledger shares: no hashing of
    their own."""
    import antispam.message as message_mod

    cfg = Config.load(overrides={"history": {"enabled": True}})
    hist = HistoryCheck(cfg, store, clock=Clock())
    msg = Message(HAM.replace(b"\n", b"\r\n"), env())
    key = "h:learned:" + msg.ledger_digests[0]
    monkeypatch.setattr(message_mod, "ledger_digests", lambda raw: pytest.fail("the message was hashed again"))
    assert hist.learn(msg, spam=False) is True and store.get(key) is not None
    assert hist.unlearn(msg) is True and store.get(key) is None


def test_engine_learns_lf_and_crlf_copies_once(store):
    """``antispam learn`` reads the file (LF), spamd TELL and the milter hand over CRLF: one message."""
    cfg = Config.load(overrides={"history": {"enabled": True}})
    e = Engine(cfg, store=store)
    who = env(ip="203.0.113.81", sender="q@phish.example")
    lf = b"From: q@phish.example\nSubject: your parcel\n\nPay the customs fee at http://parcel.example/pay\n"
    crlf = lf.replace(b"\n", b"\r\n")
    assert e.learn(lf, spam=True, envelope=who, source="cli") == {"classifier": True, "history": True}
    assert e.learn(crlf, spam=True, envelope=who, source="spamd") == {"classifier": False, "history": False}
    assert e.unlearn(crlf, envelope=who) == {"classifier": True, "history": True}
    assert e.unlearn(lf, envelope=who) == {"classifier": False, "history": False}


def test_engine_learn_hashes_the_message_once(store, digest_calls):
    """One learn (or unlearn) goes through both ledgers, the classifier's and the history's, with one
    computation of the message's ledger digests."""
    calls = digest_calls
    e = Engine(Config.load(overrides={"history": {"enabled": True}}), store=store)
    assert e.learn(HAM, spam=False, envelope=env()) == {"classifier": True, "history": True}
    assert len(calls) == 1
    assert e.unlearn(HAM, envelope=env()) == {"classifier": True, "history": True}
    assert len(calls) == 2


def test_history_store_down_is_a_symbol():
    cfg = Config.load(overrides={"history": {"enabled": True}, "store": {"url": f"redis://127.0.0.1:{free_port()}/0"}})
    v = Engine(cfg).scan(HAM, env())
    assert v.has("STORE_UNAVAILABLE") and v.action == "no action"


def test_history_dkim_domains_only_from_verified_signatures(store):
    from antispam.auth.dkim import DkimOutcome, DkimSignatureResult
    from antispam.check import ScanContext
    from antispam.message import Message
    from antispam.verdict import Verdict

    cfg = Config.load(overrides={"history": {"enabled": True, "min_observations": 3}})
    hist = HistoryCheck(cfg, store, clock=Clock())
    signed = DkimOutcome((DkimSignatureResult("pass", "News.Example", "s1"), DkimSignatureResult("fail", "forged.example", "s2")))
    ham_verdict = Verdict(score=-1.0, required_score=5.0, action="no action", symbols={}, thresholds={})
    for i in range(3):
        msg = Message(b"Subject: issue %d\n\nweekly news\n" % i, Envelope(client_ip=f"192.0.2.{i + 1}"))
        ctx = ScanContext(msg.envelope, cfg)
        ctx.publish(signed)
        assert ("dkim", "news.example") in hist.entities(msg, ctx) and ("dkim", "forged.example") not in hist.entities(msg, ctx)
        hist.record(msg, ctx, ham_verdict)
    msg = Message(b"Subject: issue 4\n\nweekly news\n", Envelope(client_ip="198.51.100.200"))
    ctx = ScanContext(msg.envelope, cfg)
    ctx.publish(signed)
    hits = {h.symbol: h for h in hist.run(msg, ctx)}
    assert hits["REPUTATION_GOOD_DKIM_DOMAIN"].options == ("news.example: spam 0.0 ham 3.0",)
    # Without a verified signature the domain is not credited.
    bare = Message(b"Subject: x\n\ny\n", Envelope(client_ip="198.51.100.201"))
    assert "REPUTATION_GOOD_DKIM_DOMAIN" not in {h.symbol for h in hist.run(bare, ScanContext(bare.envelope, cfg))}


def test_a_deferred_ham_is_not_spam_nor_counted_by_the_history(store):
    """Greylisting forces ``soft reject`` on a clean message: the verdict still says ham (X-Spam-Flag,
    spamd's Spam:), and the reputation history counts neither spam nor, for each retry, ham."""
    clock = Clock()
    cfg = Config.load(overrides={"greylist": {"enabled": True, "delay": 300}, "history": {"enabled": True}})
    hist = HistoryCheck(cfg, store, clock=clock)
    e = Engine(cfg, checks=[GreylistCheck(cfg, store, clock=clock), hist], store=store)
    for i in range(7):                                   # seven first attempts, each a new triplet
        v = e.scan(HAM, env(rcpts=(f"u{i}@rcpt.example",)))
        assert v.action == "soft reject" and v.score < v.required_score
        assert not v.is_spam and dict(v.headers())["X-Spam-Flag"] == "NO"
        assert not any(name.startswith("REPUTATION_BAD") for name in v.symbols), v.symbols
    keys = [f"h:{k}:{val}:{lab}" for k, val in hist.entities(Message(HAM, env())) for lab in "sh"]
    assert store.get_counts(keys) == [0.0] * len(keys)
    clock.t += 301                                       # the retry is taken, and counted once as ham
    v = e.scan(HAM, env(rcpts=("u0@rcpt.example",)))
    assert v.action == "no action" and v.score <= 0
    assert any(c > 0 for c in store.get_counts([k for k in keys if k.endswith(":h")]))
