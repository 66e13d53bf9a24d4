"""The classifier as an engine check: a graded ``BAYES_*`` symbol weighted by the log-odds, clues as options.

One scan costs: the message views (cached on the Message, shared with other
checks), one kernel call to tokenize and hash, one kernel call to score, and
when something was learned online, one store read for the learned counts.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from .. import fastscore
from ..check import Check, Hit, ScanContext, SymbolDef
from ..config import Config
from ..frozen import quick_init
from ..logthrottle import THROTTLE
from ..message import Message
from ..resources import default_models_dir
from ..store import Store, StoreUnavailable
from .learn import TokenStats
from .model import Model, feature_scale, load_model
from .tokenizer import views

log = logging.getLogger("antispam.classifier")

#: The classifier's log-odds count up to this size: beyond it (p outside 0.00005..0.99995) more
#: certainty adds nothing to the score, so one extreme message cannot outvote every rule.
LOG_ODDS_CAP = 10.0
#: Graded symbols: (symbol, side, least log-odds of that side, description).  The name says how sure
#: the classifier is (``BAYES_SPAM_95``: spam probability 95% to 99%); the *weight* carries the exact
#: evidence (see :func:`bayes_hit`), and the policy multiplies the configured score by it.
#: probability bands, on either side of p = 0.5: (percent, lower bound, upper bound)
_BANDS = ((99, 0.99, 1.0), (95, 0.95, 0.99), (90, 0.90, 0.95), (80, 0.80, 0.90), (60, 0.60, 0.80), (50, 0.50, 0.60))
GRADES: tuple[tuple[str, str, float, str], ...] = tuple(
    (f"BAYES_{side}_{pct}", f"BAYES_{side}", math.log(lo / (1.0 - lo)),
     f"Token classifier: {side.lower()} probability {pct}% " + ("or more" if hi == 1.0 else f"to {round(hi * 100)}%"))
    for side in ("SPAM", "HAM")
    for pct, lo, hi in _BANDS
)
#: grade symbol -> its side, ``BAYES_SPAM`` or ``BAYES_HAM``: the two slopes ``antispam fit`` fits
SIDE_OF = {name: side for name, side, _, _ in GRADES}
_SPAM_SIDE = tuple((name, least) for name, side, least, _ in GRADES if side == "BAYES_SPAM")
_HAM_SIDE = tuple((name, least) for name, side, least, _ in GRADES if side == "BAYES_HAM")
#: default scores of each side's grades (``antispam fit`` writes the fitted ones into default.toml)
DEFAULT_SIDE_SCORE = {"BAYES_SPAM": 8.0, "BAYES_HAM": -8.0}


def bayes_hit(log_odds: float) -> tuple[str, float]:
    """The graded symbol and weight for calibrated log-odds ``z = ln(p / (1 - p))`` of spam.

    The spam side (``z >= 0``) gets weight ``min(z, 10) / 10``, the ham side ``min(-z, 10) / 10``;
    the symbol is the grade of ``p`` on that side (``BAYES_SPAM_99`` for p >= 0.99, ...,
    ``BAYES_HAM_50`` for a ham probability just over one half).  Every grade of a side has the
    same fitted score by default, so the classifier adds ``score_spam * z / 10`` or
    ``|score_ham| * z / 10`` to the total: linear in the log-odds on each side, two slopes fitted
    jointly with the rules by ``antispam fit``; a site may still score the grades apart.
    Why a continuous weight and not bins alone: bins throw away where in its bin a message
    is; 5-fold cross-validation of the joint fit on TRAIN gave the same spam recall at 0.2% ham
    FPR and a higher ROC AUC (0.99982 against 0.99968) and recall at 0.1% FPR (0.972 against
    0.970) for this form (``docs/classifier.md``).
    """
    grades, z = (_SPAM_SIDE, log_odds) if log_odds >= 0.0 else (_HAM_SIDE, -log_odds)
    for name, least in grades:
        if z >= least:
            return name, min(z, LOG_ODDS_CAP) / LOG_ODDS_CAP
    raise AssertionError("unreachable: the 50 grade takes every z >= 0")  # pragma: no cover


@quick_init
@dataclass(frozen=True, slots=True)
class Classification:
    """What the classifier concluded about one message (published on the scan context)."""

    probability: float
    margin: float
    #: (token, contribution to the margin), strongest first
    clues: tuple[tuple[str, float], ...]
    n_features: int
    #: the part of the margin that online learning added
    learned: float = 0.0
    #: calibrated log-odds of spam, ``ln(p / (1 - p))`` (exact even where p rounds to 0 or 1)
    log_odds: float = 0.0

    @property
    def symbol(self) -> str:
        return bayes_hit(self.log_odds)[0]

    @property
    def weight(self) -> float:
        return bayes_hit(self.log_odds)[1]


class Classifier:
    """A loaded model plus optional learned statistics: scores messages, learns from them."""

    def __init__(self, model: Model, store: Store | None = None, learn_rate: float = 0.3, clues: int = 5):
        self.model = model
        self.clues = clues
        self.stats = TokenStats(store, model.spec, learn_rate) if store is not None else None

    def features(self, msg: Message, impl=None) -> np.ndarray:
        subject, text, meta = views(msg)
        s = self.model.spec
        return (impl or fastscore.impl).features(subject, text, meta, s.seed, s.bits, s.bigrams)

    def classify(self, msg: Message, impl=None) -> Classification:
        k = impl or fastscore.impl
        ids = self.features(msg, k)
        total, clues = k.score(ids, self.model.weights, 0.0, self.clues)
        n = len(ids)
        scale = feature_scale(n)
        learned = 0.0
        if self.stats is not None and n:
            try:
                learned = self.stats.adjustment(ids) * scale
            except StoreUnavailable as exc:
                THROTTLE.warning(log, "classifier-store", "classifier: learned statistics unavailable: %s", exc)
        margin = self.model.bias + total * scale + learned
        named = tuple((self.model.token_name(i), c * scale) for i, c in clues)
        return Classification(probability=self.model.probability(margin, n), margin=margin, clues=named,
                              n_features=n, learned=learned, log_odds=self.model.log_odds(margin, n))

    def learn(self, msg: Message, spam: bool, source: str = "api") -> bool:
        if self.stats is None:
            return False
        return self.stats.learn(msg.raw, self.features(msg), spam, source, digests=msg.ledger_digests)

    def unlearn(self, msg: Message) -> bool:
        if self.stats is None:
            return False
        return self.stats.unlearn(msg.raw, self.features(msg), digests=msg.ledger_digests)


def _options(c: Classification) -> tuple[str, ...]:
    opts = [f"p={c.probability:.4f}"]
    opts.extend(f"{tok[:40]}:{v:+.3f}" for tok, v in c.clues)
    if c.learned:
        opts.append(f"learned:{c.learned:+.3f}")
    return tuple(opts)


class ClassifierCheck(Check):
    """Emits one graded ``BAYES_SPAM_*`` or ``BAYES_HAM_*`` symbol weighted by the log-odds, with the strongest clues as options."""

    name = "classifier"
    symbols = tuple(SymbolDef(n, DEFAULT_SIDE_SCORE[side], d, "classifier") for n, side, _, d in GRADES)

    def __init__(self, classifier: Classifier):
        self.classifier = classifier

    def run(self, msg: Message, ctx: ScanContext) -> Iterable[Hit]:
        c = self.classifier.classify(msg)
        ctx.publish(c)
        name, weight = bayes_hit(c.log_odds)
        return (Hit(name, weight, _options(c)),)

    def learn(self, msg: Message, spam: bool, source: str = "api") -> bool:
        return self.classifier.learn(msg, spam, source)

    def unlearn(self, msg: Message) -> bool:
        return self.classifier.unlearn(msg)


_DEFAULT_MODEL: Model | None = None


def default_model() -> Model:
    """The embedded default model (loaded once per process: it is immutable)."""
    global _DEFAULT_MODEL
    if _DEFAULT_MODEL is None:
        _DEFAULT_MODEL = load_model(default_models_dir() / "default")
    return _DEFAULT_MODEL


def classifier_check(config: Config, store: Store | None = None) -> Check | None:
    """Engine factory: the classifier check, or None when disabled in ``[classifier]``."""
    cfg = config.classifier
    if not cfg.enabled:
        return None
    model = load_model(Path(cfg.model)) if cfg.model else default_model()
    return ClassifierCheck(Classifier(model, store, learn_rate=cfg.learn_rate, clues=cfg.clues))
