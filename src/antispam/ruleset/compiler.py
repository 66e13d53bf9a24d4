"""Parsed rules to something a matcher can run: regexes checked and grouped by buffer, metas compiled.

Each rule that tests a regular expression reads one *buffer*: ``body``,
``rawbody``, ``uri``, ``full``, or one header view (``hdr:Name:accessor``).
Rules of the same buffer are matched together by one multi-pattern scan (see
:mod:`.matcher`).  Meta rules become small Python functions over the list of
hit counts, evaluated in dependency order; their text is tokenised and only
rule names, numbers and operators reach ``compile``, so a rule file can never
run code.

Every problem is collected as a :class:`~.parser.Problem` so that all of
them are reported at once; :class:`CompileReport` also counts how many rules
were accepted unchanged, accepted after translation, and refused (and why),
which is what ``antispam rules load-sa`` prints.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

try:  # Python 3.11+: what re.compile runs on a parse tree
    from re import _compiler as _re_compiler  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    import sre_compile as _re_compiler  # type: ignore[no-redef]

from .evals import eval_function
from .parser import ParsedRules, Problem, RuleDef, Where
from .monotone import Polarity, meta_polarity
from .pattern_tree import parsed
from .regex import Unsupported, backtracking_risk, translate

#: Header names that are SpamAssassin's synthesised views of its relay analysis;
#: they have no equivalent here, so rules reading them are refused, not silently dead.
_UNSUPPORTED_PSEUDO = ("ALL-TRUSTED", "ALL-UNTRUSTED", "ALL-INTERNAL", "ALL-EXTERNAL", "X-Spam-DCC", "X-Spam-Pyzor")
#: Pseudo-headers built here from the Received chain, approximating SpamAssassin's trust inference.
_APPROXIMATED_PSEUDO = ("X-Spam-Relays-",)

#: limits on a meta expression: Python's compiler (and _meta_python) recurse over it
_META_MAX_TOKENS = 600
_META_MAX_NESTING = 100
_META_TOKEN = re.compile(r"\s*(?:([A-Za-z_][A-Za-z0-9_]*)|(\d+(?:\.\d+)?)|(&&|\|\||==|!=|>=|<=|[-+*/()<>!]))")


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """One usable rule.  ``id`` indexes the per-scan hit-count list."""

    id: int
    name: str
    kind: str  # header body rawbody uri full meta eval exists
    buffer: str  # buffer key for regex rules, "" otherwise
    score: float
    description: str
    tflags: frozenset[str]
    maxhits: int
    negate: bool
    py: bytes | None = None  # Python pattern (bytes)
    py_flags: int = 0
    hs: bytes | None = None  # Hyperscan pattern, None when Python-only
    hs_flags: int = 0  # caseless/dotall/multiline bits, engine-neutral (see matcher)
    eval_name: str | None = None
    eval_args: tuple[Any, ...] = ()
    deps: tuple[int, ...] = ()
    where: Where | None = None
    #: set for header rules: what the buffer is made of
    header: tuple[str, str, str | None] | None = None
    #: set for metas: (rule read, +1 / -1 / 0), how the meta's truth moves when that count rises
    #: (:func:`.monotone.meta_polarity`)
    polarity: tuple[tuple[int, int], ...] = ()
    #: read from SpamAssassin's own files: where SpamAssassin means something else by an eval,
    #: the uri list or the body than this project's rules do, the rule gets SpamAssassin's meaning
    spamassassin: bool = False

    @property
    def multiple(self) -> bool:
        return "multiple" in self.tflags

    @property
    def emitted(self) -> bool:
        """Sub-rules (``__``) and rules scored 0 are evaluated for metas but never reported."""
        return not self.name.startswith("__") and self.score != 0

    def reported(self, also: frozenset[str]) -> bool:
        """Whether a scan reports this rule: :attr:`emitted`, or named in ``also`` (rules the
        configuration scores though their files score them 0)."""
        return self.emitted or self.name in also


@dataclass
class CompileReport:
    """Counts for ``rules lint`` / ``load-sa``: by kind, accepted / translated / refused (with reasons)."""

    accepted: Counter = field(default_factory=Counter)
    translated: Counter = field(default_factory=Counter)
    refused: Counter = field(default_factory=Counter)
    python_only: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)

    def total(self, kind: str | None = None) -> tuple[int, int, int]:
        def get(c: Counter) -> int:
            return sum(c.values()) if kind is None else c[kind]

        return get(self.accepted), get(self.translated), get(self.refused)


@dataclass
class CompiledRules:
    rules: list[CompiledRule]
    by_name: dict[str, CompiledRule]
    #: buffer key -> ids of the regex rules reading it
    groups: dict[str, list[int]]
    #: (rule id, function(counts) -> number) in evaluation order
    metas: list[tuple[int, Callable[[list[int]], Any]]]
    evals: list[int]
    exists: list[int]
    problems: list[Problem]
    report: CompileReport
    digest: str

    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


#: the buffer of SpamAssassin's own uri rules: its uri list, which holds ``mailto:`` links too
SA_URI = "uri:sa"
#: the buffer of SpamAssassin's own body rules: its body text, every run of blanks one space
SA_BODY = "body:sa"


def _buffer_key(rule: RuleDef, spamassassin: bool) -> tuple[str, tuple[str, str, str | None] | None]:
    if spamassassin and rule.kind in ("uri", "body"):
        return (SA_URI if rule.kind == "uri" else SA_BODY), None
    if rule.kind in ("header", "mimeheader"):
        t = rule.target
        assert t is not None
        prefix = "hdr" if rule.kind == "header" else "mime"
        # The name keeps its case: pseudo-headers are case-sensitive (MESSAGEID vs MessageID).
        return f"{prefix}:{t.name}:{t.accessor}:{t.if_unset if t.if_unset is not None else ''}", (t.name, t.accessor, t.if_unset)
    return rule.kind, None


class _Refused(Exception):
    pass


def compile_rules(parsed: ParsedRules, *, lenient_meta: bool = False, sa_roots: Sequence[str] = ()) -> CompiledRules:
    """Check and translate every rule; refused rules are reported as errors (and left out).

    Rules defined in files under ``sa_roots`` (SpamAssassin's rules directories) are
    SpamAssassin's: they read its uri list and its body text, and call its variant of
    an eval where that differs from ours (:attr:`CompiledRule.spamassassin`).

    ``lenient_meta`` is SpamAssassin's own behaviour for foreign rule sets: a
    meta naming a rule that is not available (a network test, an eval of a
    plugin not implemented here) reads that rule as 0, like SpamAssassin run
    without network tests, instead of being refused.  Such metas count as
    translated.  Cycles are refused either way.
    """
    problems = list(parsed.problems)
    report = CompileReport()
    out: list[CompiledRule] = []
    # First pass: regex, eval and exists rules (metas need the final set of names).
    metas_src: list[RuleDef] = []
    refused_names: set[str] = set()
    broken = {r.name for r in parsed.rules.values() if r.broken}
    for name in broken:
        report.refused[parsed.rules[name].kind] += 1
    refused_names |= broken
    for rule in parsed.rules.values():
        if rule.kind == "pending":
            problems.append(Problem(rule.where, "ignored", "score/describe/tflags for a rule that is not defined", rule.name))
            continue
        if rule.broken:
            continue
        if rule.kind == "meta":
            metas_src.append(rule)
            continue
        try:
            out.append(_compile_one(rule, len(out), report, defined_under(rule.where, sa_roots)))
        except _Refused as exc:
            refused_names.add(rule.name)
            report.refused[rule.kind] += 1
            report.reasons[_reason_key(str(exc))] += 1
            problems.append(Problem(rule.where, "error", str(exc), rule.name))
    # Metas: resolve names, detect unknown names and cycles.
    by_name: dict[str, int] = {r.name: r.id for r in out}
    meta_ids = {}
    for rule in metas_src:
        meta_ids[rule.name] = len(out) + len(meta_ids)
    meta_tokens: dict[str, list[tuple[str, str]]] = {}
    meta_deps: dict[str, set[str]] = {}
    for rule in metas_src:
        try:
            toks = _tokenize_meta(rule.expr or "")
        except _Refused as exc:
            refused_names.add(rule.name)
            report.refused["meta"] += 1
            report.reasons[_reason_key(str(exc))] += 1
            problems.append(Problem(rule.where, "error", str(exc), rule.name))
            continue
        meta_tokens[rule.name] = toks
        meta_deps[rule.name] = {v for k, v in toks if k == "name"}
    # A meta is refused when it names a refused or unknown rule (transitively) or is in a cycle.
    state: dict[str, str] = {}
    order: list[str] = []

    def visit(name: str, chain: list[str]) -> str | None:
        st = state.get(name)
        if st == "done":
            return None
        if st == "bad":
            return f"depends on refused meta {name}" if chain else "part of a refused meta chain"
        if st == "visiting":
            return "meta rules depend on each other in a cycle: " + " -> ".join(chain + [name])
        state[name] = "visiting"
        for dep in sorted(meta_deps[name]):
            if dep in meta_deps:
                why = visit(dep, chain + [name])
            elif dep in by_name:
                why = None
            elif lenient_meta:
                why = None
            elif dep in refused_names:
                why = f"depends on refused rule {dep}"
            else:
                why = f"unknown rule {dep}"
            if why:
                state[name] = "bad"
                return why
        state[name] = "done"
        order.append(name)
        return None

    for rule in metas_src:
        if rule.name not in meta_tokens:
            continue
        why = visit(rule.name, [])
        if why is None and state.get(rule.name) == "bad":
            why = "depends on a refused meta rule"
        if why:
            refused_names.add(rule.name)
            report.refused["meta"] += 1
            report.reasons[_reason_key(why)] += 1
            problems.append(Problem(rule.where, "error", why, rule.name))
    metas: list[tuple[int, Callable[[list[int]], Any]]] = []
    for name in order:
        rule = parsed.rules[name]
        rid = len(out)
        by_name[name] = rid
        toks = meta_tokens[name]
        missing = {v for k, v in toks if k == "name" and v not in by_name}
        fn, polarity = _meta_function(toks, by_name)
        out.append(CompiledRule(
            id=rid, name=name, kind="meta", buffer="", score=_score(rule), description=rule.description,
            tflags=rule.tflags, maxhits=rule.maxhits, negate=False,
            deps=tuple(sorted({by_name[v] for k, v in toks if k == "name" and v in by_name})), where=rule.where,
            polarity=tuple(sorted(polarity.items())),
        ))
        metas.append((rid, fn))
        if missing:
            report.translated["meta"] += 1
            problems.append(Problem(rule.where, "warning", "reads unavailable rules as 0: " + " ".join(sorted(missing)), name))
        else:
            report.accepted["meta"] += 1
    groups: dict[str, list[int]] = {}
    for r in out:
        if r.buffer:
            groups.setdefault(r.buffer, []).append(r.id)
    # The cache key of the Hyperscan databases: everything their flags depend on too (tflags
    # ``multiple`` and maxhits decide which rules are counted, and so SINGLEMATCH).
    digest = hashlib.sha256("\n".join(
        f"{r.name}\t{r.kind}\t{r.buffer}\t{r.py!r}\t{r.hs!r}\t{r.hs_flags}\t{r.py_flags}"
        f"\t{' '.join(sorted(r.tflags))}\t{r.maxhits}" for r in out
    ).encode("utf-8", "surrogateescape")).hexdigest()
    return CompiledRules(
        rules=out, by_name={r.name: r for r in out}, groups=groups, metas=metas,
        evals=[r.id for r in out if r.kind == "eval"], exists=[r.id for r in out if r.kind == "exists"],
        problems=problems, report=report, digest=digest,
    )


def scored_only(compiled: CompiledRules, also: frozenset[str] = frozenset()) -> CompiledRules:
    """The rules a scan needs: those it reports, and every rule their metas read.

    A rule scored 0 that no reported meta reads (directly or through other metas)
    changes no verdict, so it is left out of the groups, evaluations and metas, and
    its patterns out of the Hyperscan databases, as SpamAssassin leaves out a rule
    whose score is 0.  The rule list itself, and so every rule id, is unchanged.
    Corpus tools that rate or fit every rule (``rules stats``, ``rules fit``) load
    every rule instead.  ``also``: names reported all the same (the configuration
    scores them, see :func:`~.check.rules_check`).
    """
    rules = compiled.rules
    keep: set[int] = set()
    todo = [r.id for r in rules if r.reported(also)]
    while todo:
        i = todo.pop()
        if i not in keep:
            keep.add(i)
            todo.extend(rules[i].deps)
    if len(keep) == len(rules):
        return compiled
    groups = {k: kept for k, ids in compiled.groups.items() if (kept := [i for i in ids if i in keep])}
    # The databases are cached by digest: the subset is part of it.
    digest = hashlib.sha256(f"{compiled.digest}\nscored only: {sorted(keep)}".encode()).hexdigest()
    return replace(
        compiled, groups=groups, metas=[(i, fn) for i, fn in compiled.metas if i in keep],
        evals=[i for i in compiled.evals if i in keep], exists=[i for i in compiled.exists if i in keep], digest=digest,
    )


def _score(rule: RuleDef) -> float:
    """SpamAssassin's default: 1.0 for a rule without a score line, 0 for ``__`` sub-rules."""
    if rule.score is not None:
        return rule.score
    return 0.0 if rule.name.startswith("__") else 1.0


def _reason_key(text: str) -> str:
    """Group refusal reasons for the report: drop rule-specific tails."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)
    text = re.sub(r"\b_*[A-Z][A-Z0-9]*_[A-Z0-9_]+\b", "RULE", text)
    return text[:90]


_FLAG_CASELESS, _FLAG_DOTALL, _FLAG_MULTILINE = 1, 2, 4


def defined_under(where: Where | None, roots: Sequence[str]) -> bool:
    """Whether ``where`` (a rule's or a problem's place) is in a file under one of ``roots``."""
    return where is not None and where.file.startswith(tuple(roots))


def _compile_one(rule: RuleDef, rid: int, report: CompileReport, spamassassin: bool = False) -> CompiledRule:
    common = dict(id=rid, name=rule.name, score=_score(rule), description=rule.description,
                  tflags=rule.tflags, maxhits=rule.maxhits, where=rule.where, spamassassin=spamassassin)
    if rule.eval_name is not None:
        fn = eval_function(rule.eval_name, spamassassin)
        if fn is None:
            raise _Refused(f"eval function {rule.eval_name}() is not implemented")
        if fn.kinds and rule.kind not in fn.kinds:
            raise _Refused(f"eval function {rule.eval_name}() is not a {rule.kind} eval")
        try:
            args = fn.coerce_args(rule.eval_args)
        except ValueError as exc:
            raise _Refused(f"eval {rule.eval_name}(): {exc}") from None
        report.accepted[rule.kind] += 1
        return CompiledRule(kind="eval", buffer="", negate=False, eval_name=rule.eval_name,
                            eval_args=args, **common)
    if rule.exists is not None:
        report.accepted[rule.kind] += 1
        return CompiledRule(kind="exists", buffer="", negate=False, header=(rule.exists, "", None), **common)
    if rule.kind in ("header", "mimeheader"):
        assert rule.target is not None
        name = rule.target.name
        if name.startswith(_UNSUPPORTED_PSEUDO):
            raise _Refused(f"pseudo-header {name} (SpamAssassin's relay analysis) is not available")
        bad = set(filter(None, rule.target.accessor.split("+"))) - {"raw", "addr", "name", "first", "last", "host", "domain"}
        if bad:
            raise _Refused(f"header accessor :{'/'.join(sorted(bad))} is not supported")
    assert rule.pattern is not None
    # Body, URI and MIME header buffers hold one paragraph / one URI / one part's value per line,
    # so ^ and $ must see line starts and ends, as SpamAssassin's matching of each alone does.
    force_m = rule.kind in ("body", "uri", "mimeheader")
    try:
        t = translate(rule.pattern, rule.flags, force_multiline=force_m)
    except Unsupported as exc:
        raise _Refused(f"unsupported regex: {exc}") from None
    pyflags = (re.I if t.caseless else 0) | (re.S if t.dotall else 0) | (re.M if t.multiline else 0)
    try:
        # what re.compile does, from the parse tree the other checks and the matcher share
        _re_compiler.compile(parsed(t.py, pyflags), pyflags)
    except (re.error, OverflowError, ValueError, RecursionError) as exc:  # e.g. a{4294967296}
        raise _Refused(f"bad regex /{rule.pattern[:60]}/: {exc}") from None
    risk = backtracking_risk(t.py, pyflags)
    if risk:
        raise _Refused(f"regex refused: {risk}")
    approximated = rule.kind == "header" and rule.target is not None and rule.target.name.startswith(_APPROXIMATED_PSEUDO)
    if t.changed or t.hs is None or rule.notes or approximated:
        report.translated[rule.kind] += 1
    else:
        report.accepted[rule.kind] += 1
    if t.hs is None:
        report.python_only[rule.kind] += 1
    key, header = _buffer_key(rule, spamassassin)
    hsflags = (_FLAG_CASELESS if t.caseless else 0) | (_FLAG_DOTALL if t.dotall else 0) | (_FLAG_MULTILINE if t.multiline else 0)
    return CompiledRule(kind=rule.kind, buffer=key, negate=rule.negate, py=t.py, py_flags=pyflags, hs=t.hs,
                        hs_flags=hsflags, header=header, **common)


def _tokenize_meta(expr: str) -> list[tuple[str, str]]:
    toks: list[tuple[str, str]] = []
    pos = 0
    expr = expr.strip()
    while pos < len(expr):
        m = _META_TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise _Refused(f"cannot read meta expression at {expr[pos:pos + 20]!r}")
        pos = m.end()
        if m.group(1):
            toks.append(("name", m.group(1)))
        elif m.group(2):
            toks.append(("num", m.group(2)))
        else:
            toks.append(("op", m.group(3)))
        if len(toks) > _META_MAX_TOKENS:
            raise _Refused(f"meta expression longer than {_META_MAX_TOKENS} terms and operators")
    if not toks:
        raise _Refused("empty meta expression")
    depth = bangs = 0
    prev = ""
    for kind, v in toks:
        depth += (v == "(") - (v == ")") if kind == "op" else 0
        if depth < 0:
            break
        # ``(`` and a run of ``!`` nest (both are recursed into, here and by Python's compiler)
        bangs = bangs + 1 if (kind, v) == ("op", "!") else bangs if (kind, v) == ("op", "(") else 0
        if depth + bangs > _META_MAX_NESTING:
            raise _Refused(f"meta expression nested more than {_META_MAX_NESTING} deep")
        # Perl would refuse ``(A)(B)`` or ``A > 1 0``; Python would read a call or a syntax error
        if kind in ("name", "num") or v == "(":
            if prev in ("name", "num", ")"):
                raise _Refused(f"meta expression is not valid: {expr!r}")
        prev = kind if kind != "op" else v
    if depth != 0:
        raise _Refused(f"unbalanced parentheses in meta expression {expr!r}")
    # Validate by compiling once with placeholder names.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile(_meta_python(toks, lambda n: "0"), "<meta>", "eval")
    except (SyntaxError, RecursionError, MemoryError, ValueError):
        raise _Refused(f"meta expression is not valid: {expr!r}") from None
    return toks


def _meta_python(toks: list[tuple[str, str]], name_expr: Callable[[str], str]) -> str:
    """Perl-ish meta syntax to Python: ``&&`` and, ``||`` or, ``!`` not (``!=`` stays).

    Perl's ``!`` binds tighter than arithmetic while Python's ``not`` binds
    looser, so ``!X`` becomes ``(not X)`` around its single operand (a name, a
    number, a parenthesised group or another ``!X``).
    """
    out: list[str] = []
    pos = 0

    def operand(i: int) -> int:
        """Emit the operand starting at token i; return the index after it."""
        kind, v = toks[i] if i < len(toks) else ("op", ")")
        if kind == "op" and v == "!":
            out.append("(not ")
            j = operand(i + 1)
            out.append(")")
            return j
        if kind == "op" and v == "(":
            out.append("(")
            j = i + 1
            while j < len(toks) and toks[j] != ("op", ")"):
                j = one(j)
            out.append(")")
            return j + 1
        return one(i)

    def one(i: int) -> int:
        kind, v = toks[i]
        if kind == "name":
            out.append(name_expr(v))
        elif kind == "num":
            out.append(v)
        elif v == "!":
            return operand(i)
        elif v == "(":
            return operand(i)
        else:
            out.append({"&&": " and ", "||": " or "}.get(v, f" {v} "))
        return i + 1

    while pos < len(toks):
        pos = one(pos)
    return "".join(out)


def _meta_function(toks: list[tuple[str, str]], ids: dict[str, int]) -> tuple[Callable[[list[int]], Any], Polarity]:
    """The meta as a function of the counts, and how its truth moves with each count it reads."""
    expr = "(" + _meta_python(toks, lambda n: f"h[{ids[n]}]" if n in ids else "0") + ")"
    # The source holds only h[...] indexes, numbers and operators (see _tokenize_meta).
    return eval(compile("lambda h: " + expr, "<meta>", "eval"), {"__builtins__": {}}), meta_polarity(expr)  # noqa: S307
