"""Classifier: training round trip, model files, loading checks, the engine check, learn/unlearn."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from antispam import Config, Engine
from antispam.classifier import Classifier, ClassifierCheck, bayes_hit, default_model, load_model
from antispam.classifier.model import Model
from antispam.classifier.tokenizer import TOKENIZER_VERSION, TokenizerSpec
from antispam.errors import ModelError
from antispam.message import Message, ledger_digests
from antispam.store.memory import MemoryStore

SPAM_LINES = [
    "Buy cheap pills online, lowest prices guaranteed, order now",
    "You have won a lottery prize, claim your cash reward today",
    "Limited offer: earn money fast from home, click the link",
    "Cheap replica watches, free shipping, order today and save",
    "Lose weight fast with our miracle pills, order now",
    "Claim your free casino bonus now, win cash instantly",
    "Lowest mortgage rates, refinance now and save money",
    "Your account wins a free prize, click here to claim cash",
]
HAM_LINES = [
    "Hi Bob, the meeting moved to Thursday; I attached the agenda for the project review",
    "The build failed on the test server, I pushed a fix for the parser module",
    "Thanks for the patch, I merged it into the release branch this morning",
    "Could you review my notes on the kernel scheduler before Friday's call?",
    "Lunch tomorrow? The new place near the office has good soup",
    "Minutes from the committee meeting are on the wiki, please comment",
    "I updated the documentation for the configuration parser as discussed",
    "The conference paper deadline is next week; draft attached for review",
]


def _spam(i: int, line: str) -> bytes:
    return (f"From: Deals <promo{i}@offers{i}.example>\nTo: you@x.example\nSubject: {line.split(',')[0].upper()}!!!\n"
            f"Content-Type: text/html\n\n<html><body><a href=\"http://win{i}.example/\">{line}</a></body></html>\n").encode()


def _ham(i: int, line: str) -> bytes:
    return (f"From: Colleague {i} <dev{i}@work.example>\nTo: team@work.example\nSubject: Re: notes {i}\n"
            f"In-Reply-To: <{i}@work.example>\n\n{line}\n-- \nregards\n").encode()


SPAM = [_spam(i, s) for i, s in enumerate(SPAM_LINES)]
HAM = [_ham(i, s) for i, s in enumerate(HAM_LINES)]


@pytest.fixture(scope="module")
def small_model():
    pytest.importorskip("sklearn")
    from antispam.classifier.train import Example, train

    examples = [Example(x, True) for x in SPAM] + [Example(x, False) for x in HAM]
    return train(examples, TokenizerSpec(bits=16), c_grid=(1.0, 10.0), folds=4)


def test_training_round_trip(small_model, tmp_path):
    m = small_model
    assert m.spec.bits == 16 and m.weights.shape == (1 << 16,)
    assert m.meta["trained_on"]["spam"] == len(SPAM) and m.meta["trained_on"]["ham"] == len(HAM)
    assert 0.5 <= m.threshold <= 1.0
    path = m.save(tmp_path / "small")
    meta = json.loads(path.read_text())
    assert meta["tokenizer"] == {"version": TOKENIZER_VERSION, "seed": m.spec.seed, "bits": 16, "bigrams": False}
    assert set(meta["arrays"]) == {"indices", "weights"}
    loaded = load_model(tmp_path / "small")
    assert np.array_equal(loaded.weights, m.weights)
    assert (loaded.bias, loaded.calib_a, loaded.calib_b, loaded.threshold) == (m.bias, m.calib_a, m.calib_b, m.threshold)
    # The vocabulary maps strong features back to readable tokens.
    assert any(t in loaded.vocab.values() for t in ("cheap", "order", "header:in-reply-to", "subject:re"))
    # Unseen messages in the same style are classified correctly, with clues that explain it.
    clf = Classifier(loaded)
    spam = clf.classify(Message(_spam(99, "Order cheap pills now and claim your free cash prize")))
    ham = clf.classify(Message(_ham(99, "I reviewed the parser patch; the meeting notes are on the wiki")))
    assert spam.probability > 0.5 > ham.probability
    assert spam.clues and all(isinstance(t, str) and isinstance(v, float) for t, v in spam.clues)
    assert spam.clues[0][1] > 0 and abs(spam.clues[0][1]) >= abs(spam.clues[-1][1])


def test_training_needs_both_classes():
    pytest.importorskip("sklearn")
    from antispam.classifier.train import Example, train

    with pytest.raises(ValueError, match="at least 2 spam"):
        train([Example(x, False) for x in HAM])


def _copy_default(tmp_path):
    from antispam.resources import default_models_dir

    d = tmp_path / "m"
    shutil.copytree(default_models_dir() / "default", d)
    return d


def test_loading_refuses_tampered_arrays(tmp_path):
    d = _copy_default(tmp_path)
    w = np.load(d / "weights.npy")
    w[0] += 1.0
    np.save(d / "weights.npy", w)
    with pytest.raises(ModelError, match="sha256"):
        load_model(d)


def test_loading_refuses_tokenizer_mismatch(tmp_path):
    d = _copy_default(tmp_path)
    meta = json.loads((d / "model.json").read_text())
    meta["tokenizer"]["version"] = TOKENIZER_VERSION + 1
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="tokenizer version"):
        load_model(d)


def test_loading_never_unpickles(tmp_path):
    import hashlib

    d = _copy_default(tmp_path)
    np.save(d / "weights.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    meta = json.loads((d / "model.json").read_text())
    meta["arrays"]["weights"] = hashlib.sha256((d / "weights.npy").read_bytes()).hexdigest()
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="not a plain numpy array"):
        load_model(d)


@pytest.mark.parametrize("change", ["format", "missing", "garbage", "bits"])
def test_loading_refuses_bad_metadata(tmp_path, change):
    d = _copy_default(tmp_path)
    meta = json.loads((d / "model.json").read_text())
    if change == "format":
        meta["format"] = "something-else"
        (d / "model.json").write_text(json.dumps(meta))
    elif change == "missing":
        (d / "indices.npy").unlink()
    elif change == "garbage":
        (d / "model.json").write_text("{not json")
    else:
        meta["tokenizer"]["bits"] = 12  # indices beyond 2**12
        (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError):
        load_model(d)


def test_default_model_is_small_and_was_trained_on_train_only():
    m = default_model()
    assert m.spec.version == TOKENIZER_VERSION
    assert m.meta["trained_on"]["spam"] + m.meta["trained_on"]["ham"] == 4551  # the TRAIN split
    assert m.meta["cross_validation"]["roc_auc"] > 0.998


def test_hit_is_graded_and_weighted_by_the_capped_log_odds():
    import math

    assert bayes_hit(0.0) == ("BAYES_SPAM_50", 0.0)
    assert bayes_hit(2.5) == ("BAYES_SPAM_90", 0.25) and bayes_hit(-7.5) == ("BAYES_HAM_99", 0.75)
    assert bayes_hit(10.0) == ("BAYES_SPAM_99", 1.0) and bayes_hit(400.0) == ("BAYES_SPAM_99", 1.0)
    assert bayes_hit(-1e9) == ("BAYES_HAM_99", 1.0) and bayes_hit(-0.1)[0] == "BAYES_HAM_50"
    # the grade is the probability band: just inside and just outside each boundary
    for grade, p in (("99", 0.99), ("95", 0.95), ("90", 0.90), ("80", 0.80), ("60", 0.60)):
        z = math.log(p / (1 - p))
        assert bayes_hit(z + 1e-9)[0] == f"BAYES_SPAM_{grade}" and bayes_hit(-z - 1e-9)[0] == f"BAYES_HAM_{grade}"
        assert bayes_hit(z - 1e-6)[0] != f"BAYES_SPAM_{grade}"


def test_every_grade_of_a_side_has_the_fitted_slope():
    from antispam.classifier.check import GRADES

    scores = Config.default().scores
    for side in ("BAYES_SPAM", "BAYES_HAM"):
        values = {scores[name] for name, s, _, _ in GRADES if s == side}
        assert len(values) == 1
    assert scores["BAYES_SPAM_99"] > 0 > scores["BAYES_HAM_99"]


def test_engine_score_follows_the_log_odds():
    """The verdict carries the classifier's evidence linearly: configured score x capped log-odds / 10."""
    e = Engine()
    clf = Classifier(default_model())
    for raw in (SPAM[0], HAM[0]):
        c = clf.classify(Message(raw))
        (sym,) = [s for s in e.scan(raw).symbols.values() if s.name.startswith("BAYES_")]
        name, weight = bayes_hit(c.log_odds)
        assert sym.name == name and sym.weight == weight
        assert sym.score == pytest.approx(e.policy.scores[name] * weight)
        assert c.probability == pytest.approx(1 / (1 + np.exp(-c.log_odds)))


def test_default_engine_runs_the_classifier():
    e = Engine()
    assert "classifier" in [c.name for c in e.checks]
    v = e.scan(SPAM[0])
    bayes = [s for s in v.symbols.values() if s.name.startswith("BAYES_")]
    assert len(bayes) == 1
    assert bayes[0].options[0].startswith("p=") and len(bayes[0].options) > 1


def test_classifier_can_be_disabled_and_configured(tmp_path):
    assert "classifier" not in [c.name for c in Engine(Config().merged({"classifier": {"enabled": False}})).checks]
    d = _copy_default(tmp_path)
    e = Engine(Config().merged({"classifier": {"model": str(d), "clues": 2}}))
    v = e.scan(HAM[0])
    (sym,) = [s for s in v.symbols.values() if s.name.startswith("BAYES_")]
    assert len(sym.options) == 3  # p= and two clues
    bad = tmp_path / "nothing"
    with pytest.raises(ModelError):
        Engine(Config().merged({"classifier": {"model": str(bad)}}))


@pytest.fixture
def store(any_store):
    return any_store


def _counts(clf: Classifier, raw: bytes) -> tuple[list[float], tuple[float, float]]:
    ids = clf.features(Message(raw))
    st = clf.stats
    return st.store.get_counts(st._keys(ids.tolist(), "s:") + st._keys(ids.tolist(), "h:")), st.totals()


def test_learn_counts_once_and_unlearn_restores(store):
    clf = Classifier(default_model(), store, learn_rate=0.3)
    # a message of each class learned first: learned evidence needs both (see the next test)
    clf.learn(Message(SPAM[0]), spam=True)
    clf.learn(Message(HAM[5]), spam=False)
    raw = HAM[1]
    before = clf.classify(Message(raw))
    zero = _counts(clf, raw)
    assert clf.learn(Message(raw), spam=True) is True
    once = _counts(clf, raw)
    assert clf.learn(Message(raw), spam=True) is False  # same bytes: counted once
    assert _counts(clf, raw) == once
    after = clf.classify(Message(raw))
    assert after.learned > before.learned and after.probability > before.probability
    # relabelling moves the counts from spam to ham
    assert clf.learn(Message(raw), spam=False) is True
    counts, totals = _counts(clf, raw)
    (counts0, _), n = zero, len(counts) // 2
    assert totals == (1.0, 2.0) and counts[:n] == counts0[:n] and counts[n:] == [c + 1 for c in counts0[n:]]
    assert clf.classify(Message(raw)).probability < before.probability
    # unlearn takes it out exactly; a second unlearn is a no-op
    assert clf.unlearn(Message(raw)) is True
    assert clf.unlearn(Message(raw)) is False
    assert _counts(clf, raw) == zero
    assert clf.classify(Message(raw)) == before


def _crlf(raw: bytes) -> bytes:
    """The copy of an LF message that spamd TELL, the milter or rspamd's HTTP learning hands over."""
    return raw.replace(b"\n", b"\r\n")


def test_ledger_digest_ignores_crlf_line_ends():
    lf = HAM[4]
    digest, *legacy = ledger_digests(lf)
    assert digest == hashlib.sha256(lf).hexdigest()          # an LF message keeps its key from before
    assert legacy == [hashlib.sha256(_crlf(lf)).hexdigest()]  # its CRLF copy's old key is still looked up
    assert ledger_digests(_crlf(lf)) == (digest, hashlib.sha256(_crlf(lf)).hexdigest())
    mixed = lf.replace(b"\n", b"\r\n", 2)
    assert ledger_digests(mixed) == (digest, hashlib.sha256(mixed).hexdigest(), hashlib.sha256(_crlf(lf)).hexdigest())
    # a bare CR is no line end to the parser (the message reads differently): not the same message
    assert ledger_digests(lf.replace(b"\n", b"\r"))[0] != digest
    assert ledger_digests(lf.replace(b"\n", b"\r\r\n"))[0] != digest
    assert ledger_digests(b"") == (hashlib.sha256(b"").hexdigest(),)


def test_a_message_is_hashed_once_for_the_ledgers(store, digest_calls):
    """Message.ledger_digests is ledger_digests() of the bytes scanned, computed on first read; TokenStats
    keys its ledger with them when given, as it does from the bytes."""
    calls = digest_calls
    msg = Message(b"From a@example.com Mon Jan  1 00:00:00 2024\n" + _crlf(HAM[7]))  # the From line is not scanned
    assert msg.ledger_digests == ledger_digests(_crlf(HAM[7])) and msg.ledger_digests is msg.ledger_digests
    assert calls == [msg.raw]
    clf = Classifier(default_model(), store, learn_rate=0.3)
    ids = clf.features(msg)
    zero = _counts(clf, HAM[7])
    assert clf.stats.learn(msg.raw, ids, spam=True, digests=msg.ledger_digests) is True
    assert calls == [msg.raw]
    assert clf.stats.learn(HAM[7], ids, spam=True) is False    # the bytes give the same keys
    assert clf.stats.unlearn(msg.raw, ids, digests=msg.ledger_digests) is True
    assert _counts(clf, HAM[7]) == zero and len(calls) == 2


@pytest.mark.parametrize("first_crlf", [False, True], ids=["lf-first", "crlf-first"])
def test_lf_and_crlf_copies_are_learned_once(store, first_crlf):
    clf = Classifier(default_model(), store, learn_rate=0.3)
    lf = HAM[5]
    first, second = (_crlf(lf), lf) if first_crlf else (lf, _crlf(lf))
    assert clf.features(Message(lf)).tolist() == clf.features(Message(_crlf(lf))).tolist()
    zero = _counts(clf, lf)
    assert clf.learn(Message(first), spam=True) is True
    once = _counts(clf, lf)
    assert clf.learn(Message(second), spam=True) is False    # the same message, the other line ends: counted once
    assert _counts(clf, lf) == once
    # relabelling through the other copy moves the counts once
    assert clf.learn(Message(second), spam=False) is True
    assert clf.learn(Message(first), spam=False) is False
    counts, totals = _counts(clf, lf)
    n = len(counts) // 2
    assert totals == (0.0, 1.0) and all(c == 0 for c in counts[:n]) and all(c == 1 for c in counts[n:])
    # unlearn of the other copy takes out what the first learned
    assert clf.unlearn(Message(second)) is True
    assert clf.unlearn(Message(first)) is False
    assert _counts(clf, lf) == zero


def test_ledger_entries_keyed_by_raw_bytes_are_honoured(store):
    """Entries written before line ends were normalised are keyed by sha256 of the bytes as learned."""
    clf = Classifier(default_model(), store, learn_rate=0.3)
    lf = HAM[6]
    crlf = _crlf(lf)
    zero = _counts(clf, lf)
    # what the earlier code wrote for a message learned as spam through spamd TELL: counts and ledger entry
    clf.stats._add(clf.features(Message(crlf)), True, 1.0)
    store.set("learn:cls:" + hashlib.sha256(crlf).hexdigest(), b"spam spamd")
    once = _counts(clf, lf)
    assert clf.learn(Message(lf), spam=True) is False        # learned again from a file: already counted
    assert clf.learn(Message(crlf), spam=True) is False
    assert _counts(clf, lf) == once
    assert clf.learn(Message(lf), spam=False) is True        # relabelled from a file: the counts move once
    assert clf.learn(Message(crlf), spam=False) is False
    counts, totals = _counts(clf, lf)
    n = len(counts) // 2
    assert totals == (0.0, 1.0) and all(c == 0 for c in counts[:n]) and all(c == 1 for c in counts[n:])
    assert clf.unlearn(Message(crlf)) is True                # the entry under the bytes as given
    assert clf.unlearn(Message(lf)) is False
    assert _counts(clf, lf) == zero
    # the same again, unlearned from the LF file
    clf.stats._add(clf.features(Message(crlf)), False, 1.0)
    store.set("learn:cls:" + hashlib.sha256(crlf).hexdigest(), b"ham spamd")
    assert clf.unlearn(Message(lf)) is True
    assert clf.unlearn(Message(crlf)) is False
    assert _counts(clf, lf) == zero
    # a message with mixed line ends is found under its own old key
    mixed = lf.replace(b"\n", b"\r\n", 3)
    clf.stats._add(clf.features(Message(mixed)), True, 1.0)
    store.set("learn:cls:" + hashlib.sha256(mixed).hexdigest(), b"spam milter")
    assert clf.learn(Message(mixed), spam=True) is False
    assert clf.unlearn(Message(mixed)) is True
    assert _counts(clf, lf) == zero


def test_one_class_learned_moves_no_score():
    """Messages of one class alone say nothing about which words are spam: learning one spam must
    not turn unrelated ham that shares its headers and common words into spam (it did: a lunch
    invitation went from -2.1 to +12.6 after one GTUBE message was learned).  Once the other class
    has messages too, the learned message's own words count."""
    e = Engine()
    lunch = b"From: Alice <alice@corp.test>\nTo: bob@other.test\nSubject: lunch\n" \
            b"Message-ID: <abc123456@corp.test>\nDate: Mon, 7 Dec 2026 10:00:00 +0000\n\n" \
            b"Are we still on for lunch tomorrow at noon?\n"
    before = e.scan(lunch).score
    for i, raw in enumerate(SPAM):
        e.learn(raw, spam=True)
        assert e.scan(lunch).score == before, i
    e.learn(HAM[0], spam=False)
    assert e.scan(lunch).score != before  # both classes now: what was learned counts
    assert e.scan(SPAM[1]).score > Engine().scan(SPAM[1]).score


def test_engine_learn_and_unlearn_through_the_store(tmp_path):
    e = Engine(Config().merged({"store": {"url": f"sqlite:///{tmp_path / 's.db'}"}}))
    e.learn(HAM[5], spam=False)  # learned evidence needs both classes
    raw = HAM[2]
    p0 = e.scan(raw).score
    assert e.learn(raw, spam=True)["classifier"] is True
    assert e.learn(raw, spam=True)["classifier"] is False
    p1 = e.scan(raw).score
    assert p1 > p0
    (sym,) = [s for s in e.scan(raw).symbols.values() if s.name.startswith("BAYES_")]
    assert any(o.startswith("learned:+") for o in sym.options)
    assert e.unlearn(raw)["classifier"] is True
    assert e.scan(raw).score == p0
    e.close()


def test_learning_rate_zero_ignores_learned_counts():
    store = MemoryStore()
    clf = Classifier(default_model(), store, learn_rate=0.0)
    before = clf.classify(Message(HAM[3]))
    clf.learn(Message(HAM[3]), spam=True)
    assert clf.classify(Message(HAM[3])) == before


def test_check_publishes_its_classification():
    from antispam.check import ScanContext
    from antispam.classifier import Classification

    check = ClassifierCheck(Classifier(default_model()))
    ctx = ScanContext(Message(SPAM[1]).envelope, Config())
    (hit,) = check.run(Message(SPAM[1]), ctx)
    c = ctx.get(Classification)
    assert c is not None and (hit.symbol, hit.weight) == (c.symbol, c.weight) == bayes_hit(c.log_odds)


def test_empty_model_scores_one_half():
    spec = TokenizerSpec(bits=10)
    m = Model(spec=spec, weights=np.zeros(1 << 10, dtype=np.float32), bias=0.0)
    assert Classifier(m).classify(Message(SPAM[0])).probability == 0.5


def test_tiny_messages_are_judged_with_little_confidence():
    """A dozen features is little evidence: the log-odds are pulled toward 0 (see model.py).

    (A message without Message-ID, To or Date leans spam, as such mail does in the corpus, but
    never with confidence.)
    """
    clf = Classifier(default_model())
    for raw in (b"Subject: hello\n\nHi Bob", b"From: a@b.example\nSubject: lunch\n\nSee you at noon.\n",
                b"From: Ann <ann@b.example>\nTo: bob@c.example\nMessage-ID: <x1@b.example>\nSubject: lunch\n\nNoon?\n"):
        c = clf.classify(Message(raw))
        assert c.n_features < 50 and 0.1 < c.probability < 0.9
        full = default_model().probability(c.margin, 50)
        assert abs(full - 0.5) > abs(c.probability - 0.5)
