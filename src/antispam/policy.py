"""Policy: hits in, verdict out.

The arithmetic, in the order applied:

1. A symbol fires at most once per scan.  If a check emits it twice, the
   larger weight is kept and the options are merged (rspamd's behaviour).
2. Its score is ``configured score x weight``; the configured score is the
   check's declared default unless ``[scores]`` overrides it.
3. Groups cap their total: the positive scores of a group's symbols add up to
   at most ``max_score`` and the negative ones to at least ``min_score``; when
   a cap bites, each member is scaled by the same factor, so the verdict still
   adds up.
4. The action is the most severe one whose threshold the total reaches, or
   the most severe action a hit forces (``Hit.action``: greylisting, rate
   limits), whichever is more severe.

The policy is built once per engine and is immutable; deciding allocates only
the verdict itself.
"""

from __future__ import annotations

import math
import sys
from typing import Iterable, Mapping

from .check import Hit, SymbolDef
from .config import ACTIONS, Config
from .verdict import SymbolResult, Verdict, freeze

_SEVERITY = {a: i for i, a in enumerate(ACTIONS)}


class Policy:
    def __init__(self, config: Config, symbols: Iterable[SymbolDef]):
        self.config = config
        defs: dict[str, SymbolDef] = {}
        for s in symbols:
            defs[s.name] = s
        self.defs = defs
        self.scores = {name: config.score_for(name, d.score) for name, d in defs.items()}
        self.descriptions = {name: config.descriptions.get(name, d.description) for name, d in defs.items()}
        self.groups = {name: d.group for name, d in defs.items()}
        #: name -> (configured score, description, group): one lookup per symbol when deciding
        self._meta = {name: (self.scores[name], self.descriptions[name], self.groups[name]) for name in defs}
        self.group_caps: Mapping[str, Mapping[str, float]] = config.groups
        # Enabled actions, most severe first.
        self.thresholds = {a: t for a, t in config.actions.items() if t is not None}
        self._ladder = sorted(self.thresholds.items(), key=lambda kv: -_SEVERITY[kv[0]])
        spam_thresholds = [t for a, t in self.thresholds.items() if a in ("add header", "rewrite subject", "soft reject", "reject")]
        self.required_score = min(spam_thresholds) if spam_thresholds else float("inf")

    def action_for(self, score: float) -> str:
        for action, threshold in self._ladder:
            if score >= threshold:
                return action
        return "no action"

    def decide(self, hits: Iterable[Hit], *, timings: Mapping[str, float] | None = None,
               skipped: tuple[str, ...] = (), message_id: str | None = None,
               authentication_results: str | None = None, subject: str | None = None,
               authserv_id: str = "") -> Verdict:
        merged: dict[str, tuple[float, tuple[str, ...]]] = {}
        forced: str | None = None
        for h in hits:
            if h.action is not None and (forced is None or _SEVERITY[h.action] > _SEVERITY[forced]):
                forced = h.action
            prev = merged.get(h.symbol)
            if prev is None:
                merged[h.symbol] = (h.weight, h.options)
            else:
                opts = prev[1] + tuple(o for o in h.options if o not in prev[1])
                merged[h.symbol] = (max(prev[0], h.weight), opts)
        results = self._results(merged)
        total = float(round(sum(r.score for r in results.values()), 4))
        if not math.isfinite(total):
            results = self._results(self._finite(merged))
            total = float(round(sum(r.score for r in results.values()), 4))
        action = self.action_for(total)
        if forced is not None and _SEVERITY[forced] > _SEVERITY[action]:
            action = forced
        return Verdict(
            score=total,
            required_score=self.required_score,
            action=action,
            symbols=freeze(results),
            thresholds=freeze(dict(self.thresholds)),
            timings=freeze(dict(timings or {})),
            skipped=skipped,
            message_id=message_id,
            authentication_results=authentication_results,
            subject=subject,
            subject_prefix=self.config.engine.subject_prefix,
            authserv_id=authserv_id,
        )

    def _meta_of(self, name: str) -> tuple[float, str, str]:
        """``(configured score, description, group)`` of a symbol.  One a check emits without declaring
        it is still shown, scored by ``[scores]`` or 0."""
        m = self._meta.get(name)
        return m if m is not None else (self.config.scores.get(name, 0.0), "", "misc")

    def _results(self, merged: Mapping[str, tuple[float, tuple[str, ...]]]) -> dict[str, SymbolResult]:
        results: dict[str, SymbolResult] = {}
        meta_of = self._meta_of
        for name, (weight, options) in merged.items():
            m = meta_of(name)
            results[name] = SymbolResult(name, m[0] * weight, weight, options, m[1], m[2])
        if self.group_caps:
            results = self._apply_caps(results)
        return results

    def _finite(self, merged: Mapping[str, tuple[float, tuple[str, ...]]]) -> dict[str, tuple[float, tuple[str, ...]]]:
        """``merged`` with each symbol whose score is not a finite number (a check's weight of NaN or of
        an infinity) counted as 0, and a ``CHECK_ERROR`` that names it.

        Such a score made the total NaN, which no threshold reaches (every comparison with NaN is
        false: "no action" whatever the other symbols said), or infinite; either way a verdict that
        ``to_dict()`` cannot write as JSON nor ``headers()`` print.  The check that computed it is
        broken, as one that raises is: the verdict stands on the others.
        """
        out = dict(merged)
        scores = {name: self._meta_of(name)[0] * weight for name, (weight, _) in merged.items()}
        bad = [name for name, score in scores.items() if not math.isfinite(score)]
        if not bad:  # finite scores whose sum overflows: those too large to add up
            bad = [name for name, score in scores.items() if abs(score) > sys.float_info.max / len(scores)]
        for name in bad:
            out[name] = (0.0, merged[name][1])
        weight, options = out.get("CHECK_ERROR", (1.0, ()))
        out["CHECK_ERROR"] = (weight, options + tuple(f"{name}: weight {merged[name][0]!r} gives no finite score"
                                                      for name in bad))
        return out

    def _apply_caps(self, results: dict[str, SymbolResult]) -> dict[str, SymbolResult]:
        by_group: dict[str, list[str]] = {}
        for name, r in results.items():
            by_group.setdefault(r.group, []).append(name)
        for group, caps in self.group_caps.items():
            members = by_group.get(group)
            if not members:
                continue
            for sign, key in ((1, "max_score"), (-1, "min_score")):
                cap = caps.get(key)
                if cap is None:
                    continue
                same = [n for n in members if results[n].score * sign > 0]
                total = sum(results[n].score for n in same)
                if total * sign > cap * sign and total != 0:
                    factor = cap / total
                    for n in same:
                        r = results[n]
                        results[n] = SymbolResult(r.name, r.score * factor, r.weight, r.options, r.description, r.group)
        return results
