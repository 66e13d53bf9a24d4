"""DMARC aggregate-report records (the ``<record>`` of RFC 9990), collected from verdicts.

Operators who send aggregate reports need, per message, the source IP, the
identifiers, the authentication results and what the policy evaluation did.
Everything but the source IP is already in a verdict: the Authentication-
Results we rendered (SPF, DKIM per signature, DMARC) and the options of the
DMARC symbol (policy domain, ``p``, disposition, alignment, overrides).  So a
record is built from ``(verdict, envelope)`` alone: an MTA hook or a server
that keeps verdicts can collect them without access to the scan's internals.

:class:`AggregateCollector` counts identical rows, as the report groups them.
Rendering the report envelope (``report_metadata``, signing, sending) is left
to the reporting tool; :meth:`AggregateCollector.to_xml` gives the records.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from typing import TYPE_CHECKING, Any

from .authres import parse

if TYPE_CHECKING:  # pragma: no cover
    from ..message import Envelope
    from ..verdict import Verdict

_DMARC_SYMBOLS = ("DMARC_POLICY_ALLOW", "DMARC_POLICY_REJECT", "DMARC_POLICY_QUARANTINE", "DMARC_POLICY_SOFTFAIL")


def _options(opts: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for o in opts:
        k, sep, v = o.partition("=")
        if sep and " " not in k:
            out.setdefault(k, v)
    return out


def aggregate_record(verdict: "Verdict", envelope: "Envelope") -> dict[str, Any] | None:
    """One RFC 9990 record (as nested dicts) for a scanned message; None when DMARC found no policy."""
    sym = next((s for s in _DMARC_SYMBOLS if s in verdict.symbols), None)
    if sym is None or not verdict.authentication_results:
        return None
    o = _options(verdict.symbols[sym].options)
    ar = parse(verdict.authentication_results)
    results = ar.results if ar else ()
    reasons = []
    if "override" in o:
        kind, _, who = o["override"].partition(":")
        reasons.append({"type": "trusted_forwarder" if kind == "arc" else "local_policy", "comment": f"{kind} {who}".strip()})
    if any(opt.startswith("pct=") and "not sampled" in opt for opt in verdict.symbols[sym].options):
        reasons.append({"type": "sampled_out", "comment": ""})
    dkim = [{"domain": r.prop("header.d") or "", "selector": r.prop("header.s") or "", "result": r.result}
            for r in results if r.method == "dkim" and r.result != "none"]
    spf = [{"domain": (r.prop("smtp.mailfrom") or r.prop("smtp.helo") or "").rpartition("@")[2],
            "scope": "mfrom" if r.prop("smtp.mailfrom") else "helo", "result": r.result}
           for r in results if r.method == "spf"]
    mail_from = (envelope.mail_from or "").strip("<>")
    return {
        "row": {
            "source_ip": envelope.client_ip or "",
            "count": 1,
            "policy_evaluated": {
                "disposition": o.get("dis", "none"),
                "dkim": "pass" if o.get("dkim") == "aligned" else "fail",
                "spf": "pass" if o.get("spf") == "aligned" else "fail",
                "reason": reasons,
            },
        },
        "identifiers": {
            "envelope_to": sorted({r.rpartition("@")[2].lower() for r in envelope.rcpt_tos if "@" in r}),
            "envelope_from": mail_from.rpartition("@")[2].lower() if mail_from else "",
            "header_from": o.get("domain", ""),
        },
        "auth_results": {"dkim": dkim, "spf": spf},
        "policy_published": {"domain": o.get("policy_domain", ""), "p": o.get("p", "")},
    }


def _freeze(x: Any) -> Any:
    if isinstance(x, dict):
        return tuple((k, _freeze(v)) for k, v in x.items() if k != "count")
    if isinstance(x, list):
        return tuple(_freeze(v) for v in x)
    return x


class AggregateCollector:
    """Counts aggregate-report records; identical rows (all but the count) are merged."""

    def __init__(self) -> None:
        self._counts: Counter[Any] = Counter()
        self._first: dict[Any, dict[str, Any]] = {}

    def add(self, verdict: "Verdict", envelope: "Envelope") -> bool:
        """Record one scanned message; False when it had no DMARC policy to report on."""
        rec = aggregate_record(verdict, envelope)
        if rec is None:
            return False
        key = _freeze(rec)
        self._counts[key] += 1
        self._first.setdefault(key, rec)
        return True

    def records(self) -> list[dict[str, Any]]:
        out = []
        for key, n in self._counts.items():
            rec = self._first[key]
            out.append({**rec, "row": {**rec["row"], "count": n}})
        return out

    def to_xml(self) -> list[ET.Element]:
        """``<record>`` elements in RFC 9990's order of fields."""
        out = []
        for rec in self.records():
            r = ET.Element("record")
            row = ET.SubElement(r, "row")
            ET.SubElement(row, "source_ip").text = rec["row"]["source_ip"]
            ET.SubElement(row, "count").text = str(rec["row"]["count"])
            pe = ET.SubElement(row, "policy_evaluated")
            for k in ("disposition", "dkim", "spf"):
                ET.SubElement(pe, k).text = rec["row"]["policy_evaluated"][k]
            for reason in rec["row"]["policy_evaluated"]["reason"]:
                re_ = ET.SubElement(pe, "reason")
                ET.SubElement(re_, "type").text = reason["type"]
                if reason["comment"]:
                    ET.SubElement(re_, "comment").text = reason["comment"]
            ids = ET.SubElement(r, "identifiers")
            for to in rec["identifiers"]["envelope_to"]:
                ET.SubElement(ids, "envelope_to").text = to
            if rec["identifiers"]["envelope_from"]:
                ET.SubElement(ids, "envelope_from").text = rec["identifiers"]["envelope_from"]
            ET.SubElement(ids, "header_from").text = rec["identifiers"]["header_from"]
            auth = ET.SubElement(r, "auth_results")
            for d in rec["auth_results"]["dkim"]:
                e = ET.SubElement(auth, "dkim")
                for k in ("domain", "selector", "result"):
                    ET.SubElement(e, k).text = d[k]
            for s in rec["auth_results"]["spf"]:
                e = ET.SubElement(auth, "spf")
                for k in ("domain", "scope", "result"):
                    ET.SubElement(e, k).text = s[k]
            out.append(r)
        return out
