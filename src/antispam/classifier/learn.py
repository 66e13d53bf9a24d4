"""Online learning on top of a shipped linear model: token statistics in the Store.

The shipped weights stay as they are; what users teach (``engine.learn``,
spamd TELL, feedback) is kept as per-feature counts in the store and turned
into an additive adjustment ``d`` of each feature's weight at score time::

    NS, NH   messages learned as spam / ham
    s_i, h_i of those, how many contained feature i        (n_i = s_i + h_i)
    q_i = n_i / (NS + NH)                                   (its rate in all learned mail)
    rs = (s_i + A q_i) / (NS + A),  rh = (h_i + A q_i) / (NH + A)
    d_i = rate * n_i / (n_i + K) * ln((rs + EPS) / (rh + EPS))

The log-ratio is naive Bayes' per-token evidence (how much more often the
feature appears in learned spam than in learned ham, each as a fraction of
its class so that learning more ham than spam does not tilt every token).
Each class's rate is estimated with a prior of ``A`` pseudo-messages at the
feature's rate over both classes (a Beta prior centred on ``q_i``): with few
messages of a class learned, its rate stays near the pooled one and the
ratio near 1.  Without it, one message learned as spam and none as ham made
every feature of that message look spam-only (rs = 1, rh = 0): one
``spamc -L spam`` turned unrelated ham into spam through the words and
headers it shared with the learned message (``-2.1`` to ``+12.6`` for a
lunch invitation after learning one GTUBE message).  Now the one-class case
gives ``d_i = 0`` exactly, and the evidence grows as both classes fill
(a feature in all of 10 spam and none of 10 ham: ln 3; of 100 each: ln 21),
the role SpamAssassin gives its 200-each minimum before Bayes counts, without
a step.  The factor ``n_i / (n_i + K)`` is a confidence shrink in the spirit
of Robinson's ``f(w)``: a feature seen once moves the score a third as much
as one seen many times.  ``EPS`` caps the ratio of a feature seen in one
class only, and ``d_i = 0`` for a feature never learned.  The adjustments
are summed and normalised like the weights (divided by ``sqrt(n)``), see
:mod:`antispam.classifier.model`.

Every learn records the message's digest in a ledger (``learn:cls:<digest>``
-> label), written with the store's atomic ``add``: learning the same message
twice counts once, learning it with the other label moves its counts, and
``unlearn`` takes them back out exactly.  The digest is the sha256 of the
message with CRLF line ends made LF (:func:`antispam.message.ledger_digests`,
shared with the reputation history's ledger), so the copy a file holds and the
copy spamd TELL or the milter hands over are one message.  Changing or
removing a ledger entry is claimed with the store's atomic ``compare_and_set``
before any count moves, so that of several processes relearning (or
unlearning) the same message at once exactly one moves its counts.

Ledgers written before line ends were normalised keyed a message by the sha256
of its bytes as learned.  Such an entry is looked up under the message's older
keys (the bytes as given, the all-CRLF form) and kept where it is: a relabel
claims it in place and an unlearn deletes it, each with ``compare_and_set`` on
that key as above.  Moving it to the new key cannot be made atomic with a
single-key compare-and-set (another process could see neither key in between
and count the message again), and nothing is lost by leaving it.  New entries
are only ever written under the new key.  (A message those ledgers counted
twice, once per line-end form, keeps both entries and both counts; each unlearn
takes one out.)

Keys carry a tag of the tokenizer (version, bits, seed) so that counts learned
under one feature space are never read under another.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..message import ledger_digests
from ..store import Store
from ..store.base import CLAIM_TRIES, first_entry
from .tokenizer import TokenizerSpec

#: the shrink constant K of the formula above
SHRINK = 2.0
#: EPS of the formula above
EPS = 0.01
#: A of the formula above: pseudo-messages of prior per class
PRIOR = 10.0


class TokenStats:
    """Learned per-feature counts for one tokenizer, in a Store."""

    def __init__(self, store: Store, spec: TokenizerSpec, rate: float):
        self.store = store
        self.rate = rate
        tag = f"{spec.version}.{spec.bits}.{spec.seed & 0xFFFFFFFF:08x}"
        self._p = f"tok:{tag}:"
        self._totals = (self._p + "n:spam", self._p + "n:ham")

    def _keys(self, ids: Sequence[int], kind: str) -> list[str]:
        p = self._p + kind
        return [f"{p}{i}" for i in ids]

    def totals(self) -> tuple[float, float]:
        ns, nh = self.store.get_counts(list(self._totals))
        return ns, nh

    def adjustment(self, ids: np.ndarray) -> float:
        """``sum_i d_i`` over the message's feature ids (0.0 when nothing was learned)."""
        if self.rate == 0.0:
            return 0.0
        ns, nh = self.totals()
        if ns <= 0 and nh <= 0:
            return 0.0
        idl = ids.tolist()
        counts = self.store.get_counts(self._keys(idl, "s:") + self._keys(idl, "h:"))
        n = len(idl)
        ns1, nh1 = max(ns, 0.0) + PRIOR, max(nh, 0.0) + PRIOR
        per_message = PRIOR / max(ns + nh, 1.0)  # A q_i = per_message * n_i
        total = 0.0
        for s, h in zip(counts[:n], counts[n:]):
            seen = s + h
            if seen <= 0:
                continue
            prior = per_message * seen
            total += seen / (seen + SHRINK) * math.log(((s + prior) / ns1 + EPS) / ((h + prior) / nh1 + EPS))
        return self.rate * total

    def _amounts(self, idl: list[int], spam: bool, sign: float) -> dict[str, float]:
        """``sign`` on the spam (or ham) count of each feature and on that side's message count: the
        increments that count one message in (+1) or take it out (-1) of one side."""
        amounts = dict.fromkeys(self._keys(idl, "s:" if spam else "h:"), sign)
        amounts[self._totals[0 if spam else 1]] = sign
        return amounts

    def _add(self, ids: np.ndarray, spam: bool, sign: float) -> None:
        """Count a message in (``sign`` +1) or out (-1) of the ``spam`` side, in one atomic ``incr_many``."""
        self.store.incr_many(self._amounts(ids.tolist(), spam, sign))

    def _move(self, ids: np.ndarray, spam: bool) -> None:
        """Move a message's counts to the ``spam`` side from the other, in one atomic ``incr_many``."""
        idl = ids.tolist()
        self.store.incr_many({**self._amounts(idl, not spam, -1.0), **self._amounts(idl, spam, 1.0)})

    def learn(self, raw: bytes, ids: np.ndarray, spam: bool, source: str = "api",
              digests: tuple[str, ...] | None = None) -> bool:
        """Count a message once.  True if the statistics changed.

        ``digests``: the message's :func:`~antispam.message.ledger_digests` when the caller has them
        already (:attr:`Message.ledger_digests <antispam.message.Message.ledger_digests>`), so that one
        ``engine.learn`` hashes the message once for both ledgers; else they are computed from ``raw``.
        """
        key, *older = ledger_keys(raw, digests)
        label = b"spam" if spam else b"ham"
        entry = label + b" " + source.encode("utf-8", "replace")[:200]
        for _ in range(CLAIM_TRIES):
            at, prev = first_entry(self.store, older) if older else (key, None)
            if prev is None:
                # No entry from before line ends were normalised (none is written there any more): the
                # message's entry, if any, is under ``key``.
                if self.store.add(key, entry):
                    try:
                        self._add(ids, spam, 1.0)
                    except Exception:
                        # The counts did not change (incr_many is all or nothing): forget the ledger entry
                        # too, so that a retry learns the message instead of calling it already learned.
                        self.store.compare_and_set(key, entry, None)
                        raise
                    return True
                at, prev = key, self.store.get(key)
                if prev is None:
                    continue  # unlearned since our add: try again
            if prev.split(b" ", 1)[0] == label:
                return False
            # Learned before with the other label: claim the change, then move its counts.  Another process
            # relearning it at the same time reads the same ``prev``; only one compare_and_set succeeds.
            if self.store.compare_and_set(at, prev, entry):
                try:
                    self._move(ids, spam)
                except Exception:
                    self.store.compare_and_set(at, entry, prev)  # the counts did not move: nor does the label
                    raise
                return True
        return False

    def unlearn(self, raw: bytes, ids: np.ndarray, digests: tuple[str, ...] | None = None) -> bool:
        """Take a learned message back out.  False if it was never learned.  ``digests`` as for :meth:`learn`."""
        keys = ledger_keys(raw, digests)
        for _ in range(CLAIM_TRIES):
            at, prev = first_entry(self.store, keys)
            if prev is None:
                return False
            # Delete only the entry we read: if another process relearned it meanwhile, read it again, so
            # that the counts taken out are those of the label really counted.
            if self.store.compare_and_set(at, prev, None):
                try:
                    self._add(ids, prev.split(b" ", 1)[0] == b"spam", -1.0)
                except Exception:
                    self.store.compare_and_set(at, None, prev)
                    raise
                return True
        return False


def ledger_keys(raw: bytes, digests: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """``learn:cls:<digest>`` of a message, then the keys older ledgers may hold it under (see the module);
    from ``digests`` when given (the :func:`ledger_digests` of ``raw``)."""
    return tuple("learn:cls:" + d for d in (ledger_digests(raw) if digests is None else digests))
