"""The classifier as an engine check: graded ``BAYES_*`` symbols whose options are the clues.

One scan costs: the message views (cached on the Message, shared with other
checks), one kernel call to tokenize and hash, one kernel call to score, and
when something was learned online, one store read for the learned counts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from .. import fastscore
from ..check import Check, Hit, ScanContext, SymbolDef
from ..config import Config
from ..message import Message
from ..resources import default_models_dir
from ..store import Store, StoreUnavailable
from .learn import TokenStats
from .model import Model, feature_scale, load_model
from .tokenizer import views

log = logging.getLogger("antispam.classifier")

#: (symbol, lower bound of p(spam), default score, description), highest first.  A message gets
#: exactly one: the first whose bound its probability reaches.
GRADES: tuple[tuple[str, float, float, str], ...] = (
    ("BAYES_SPAM_99", 0.99, 6.0, "Token classifier: spam probability 99% or more"),
    ("BAYES_SPAM_95", 0.95, 5.0, "Token classifier: spam probability 95% to 99%"),
    ("BAYES_SPAM_90", 0.90, 4.0, "Token classifier: spam probability 90% to 95%"),
    ("BAYES_SPAM_80", 0.80, 3.0, "Token classifier: spam probability 80% to 90%"),
    ("BAYES_SPAM_60", 0.60, 1.5, "Token classifier: spam probability 60% to 80%"),
    ("BAYES_UNSURE", 0.40, 0.0, "Token classifier: undecided (spam probability 40% to 60%)"),
    ("BAYES_HAM_60", 0.05, -0.5, "Token classifier: ham probability 60% to 95%"),
    ("BAYES_HAM", 0.01, -1.5, "Token classifier: ham probability 95% to 99%"),
    ("BAYES_HAM_99", 0.0, -3.0, "Token classifier: ham probability 99% or more"),
)


def grade(p: float) -> str:
    """The symbol for spam probability ``p``."""
    for name, low, _, _ in GRADES:
        if p >= low:
            return name
    return GRADES[-1][0]


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

    @property
    def symbol(self) -> str:
        return grade(self.probability)


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
                log.warning("classifier: learned statistics unavailable: %s", exc)
        margin = self.model.bias + total * scale + learned
        named = tuple((self.model.token_name(i), c * scale) for i, c in clues)
        return Classification(probability=self.model.probability(margin, n), margin=margin, clues=named,
                              n_features=n, learned=learned)

    def learn(self, msg: Message, spam: bool, source: str = "api") -> bool:
        if self.stats is None:
            return False
        return self.stats.learn(msg.raw, self.features(msg), spam, source)

    def unlearn(self, msg: Message) -> bool:
        if self.stats is None:
            return False
        return self.stats.unlearn(msg.raw, self.features(msg))


def _options(c: Classification) -> tuple[str, ...]:
    opts = [f"p={c.probability:.4f}"]
    opts.extend(f"{tok[:40]}:{v:+.3f}" for tok, v in c.clues)
    if c.learned:
        opts.append(f"learned:{c.learned:+.3f}")
    return tuple(opts)


class ClassifierCheck(Check):
    """Emits one graded ``BAYES_*`` symbol per message, with the strongest clue tokens as options."""

    name = "classifier"
    symbols = tuple(SymbolDef(n, s, d, "classifier") for n, _, s, d in GRADES)

    def __init__(self, classifier: Classifier):
        self.classifier = classifier

    def run(self, msg: Message, ctx: ScanContext) -> Iterable[Hit]:
        c = self.classifier.classify(msg)
        ctx.publish(c)
        return (Hit(c.symbol, 1.0, _options(c)),)

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
