"""Reading SpamAssassin-style rule files (``*.cf``) into plain data.

The parser knows the *language*, not the matching: it turns lines into
:class:`RuleDef` records and collects every problem it meets as a
:class:`Problem` with ``file:line``, so that ``antispam rules lint`` can show
them all at once instead of stopping at the first.  Nothing is ever dropped
silently: a line the parser does not understand, or understands but does not
act on (SpamAssassin's whitelists, DNS list settings...), becomes a problem of
severity ``"ignored"``; a rule it cannot use becomes an ``"error"``.

Supported: ``header`` (``Name``, ``Name:raw|addr|name|first|last|host|domain``,
``ALL``, ``ToCc``, ``exists:Name``, ``=~``/``!~``, ``[if-unset: TEXT]``,
``eval:``), ``body``, ``rawbody``, ``uri``, ``full``, ``meta``, ``score``,
``describe``, ``tflags``, ``priority``, ``if``/``ifplugin``/``else``/``endif``,
``include``, ``loadplugin`` (marks a plugin present for ``ifplugin``), ``lang``
(only untranslated lines are used), ``require_version`` and the ReplaceTags
directives (``replace_tag``, ``replace_pre``, ``replace_inter``, ``replace_post``,
``replace_start``, ``replace_end``, ``replace_rules``), applied here so that
the compiler only ever sees finished regular expressions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

#: The SpamAssassin version this dialect matches, for ``if (version >= X)``.
SA_VERSION = 4.000001

#: ``if can(Mail::SpamAssassin::Conf::X)`` features that hold here.
FEATURES = frozenset({
    "feature_bug6558_free", "perl_min_version_5010000", "feature_welcomelist_blocklist",
    "feature_originating_ip_headers", "feature_dns_local_ports_permit_avoid",
    "feature_yesno_can_tflags", "feature_registryboundaries", "feature_geodb",
    "feature_blocklist_welcomelist", "has_tflags_nosubject", "feature_dns_block_rule",
})

RULE_KINDS = ("header", "body", "rawbody", "uri", "full", "meta", "mimeheader")

#: Directives that configure SpamAssassin features this engine handles elsewhere
#: (or not at all).  They are reported as ``ignored``, never silently skipped.
_KNOWN_FOREIGN = frozenset("""
def_whitelist_auth def_welcomelist_auth whitelist_auth welcomelist_auth whitelist_from welcomelist_from
def_whitelist_from_dkim def_welcomelist_from_dkim def_whitelist_from_spf def_welcomelist_from_spf
whitelist_from_rcvd welcomelist_from_rcvd blacklist_from blocklist_from freemail_domains
freemail_whitelist freemail_welcomelist bayes_ignore_header util_rb_tld util_rb_2tld util_rb_3tld
url_shortener enlist_uri_host enlist_addrlist uridnsbl_skip_domain urirhssub urirhsbl uridnsbl
uridnssub askdns report report_contact required_score required_hits dns_local_ports_avoid
adsp_override redirector_pattern header_ipaddrs clear_report_template unsafe_report
report_safe add_header remove_header clear_headers test reuse lock_method use_bayes
bayes_auto_learn skip_rbl_checks dns_available mimeheader_unused trusted_networks
internal_networks envelope_sender_header dcc_path pyzor_path razor_config
clear_util_rb util_rb_tld_unused clear_originating_ip_headers
originating_ip_headers clear_trusted_networks uri_block_cc uri_block_cont bayes_stopword_en
dns_server normalize_charset rbl_timeout use_auto_whitelist use_txrep
""".split())


@dataclass(frozen=True, slots=True)
class Where:
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with, or skipped in, a rule file.

    ``severity``: ``"error"`` makes the rule (or the file) unusable and fails
    loading unless bad rules are skipped; ``"ignored"`` is a line understood
    but not acted on; ``"warning"`` is a rule that works with a caveat.
    """

    where: Where | None
    severity: str
    message: str
    rule: str | None = None

    def __str__(self) -> str:
        at = f"{self.where}: " if self.where else ""
        who = f"{self.rule}: " if self.rule else ""
        return f"{at}{self.severity}: {who}{self.message}"


@dataclass(frozen=True, slots=True)
class HeaderTarget:
    """What a ``header`` rule reads: a header (or ``ALL``/``ToCc``) through an accessor."""

    name: str  # as written, e.g. "From", "ALL", "ToCc", "MESSAGEID"
    accessor: str = ""  # "", raw, addr, name, first, last, host, domain
    if_unset: str | None = None


@dataclass(slots=True)
class RuleDef:
    """One rule as written.  ``kind`` is header/body/rawbody/uri/full/meta."""

    name: str
    kind: str
    where: Where
    pattern: str | None = None  # Perl regex body, without delimiters
    flags: str = ""  # Perl regex flags: i m s x
    negate: bool = False  # header !~
    target: HeaderTarget | None = None
    exists: str | None = None  # header exists:NAME
    eval_name: str | None = None
    eval_args: tuple[object, ...] = ()
    expr: str | None = None  # meta expression
    score: float | None = None
    #: every score given (SpamAssassin's four sets: no net/no bayes, net, bayes, net+bayes)
    score_sets: tuple[float, ...] = ()
    description: str = ""
    tflags: frozenset[str] = frozenset()
    maxhits: int = 0
    priority: int = 0
    #: the rule was read but cannot be used (the reason is among the problems)
    broken: bool = False
    #: how the rule text was changed on its way in (ReplaceTags...), for load-sa reports
    notes: list[str] = field(default_factory=list)

    @property
    def is_sub(self) -> bool:
        """``__``-prefixed rules are building blocks of metas: evaluated, never scored."""
        return self.name.startswith("__")


@dataclass
class ParsedRules:
    """Everything read from a set of files, before compilation."""

    rules: dict[str, RuleDef] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    plugins: set[str] = field(default_factory=set)
    #: (file, line) -> digest material: the text of every used line, for the cache key
    text: list[str] = field(default_factory=list)

    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HEADER_SPEC_RE = re.compile(r"^(\S+?)(?::(raw|addr|name|first|last|host|domain|ip|revip))*\s*(=~|!~)\s*(.*)$", re.S)
_IF_UNSET_RE = re.compile(r"\s*\[if-unset:\s*(.*?)\]\s*$")
_EVAL_RE = re.compile(r"^eval:\s*([A-Za-z_][A-Za-z0-9_]*)\s*\((.*)\)\s*$", re.S)
_BRACKETS = {"{": "}", "(": ")", "[": "]", "<": ">"}
_TAG_RE = re.compile(r"<([^<>\s]+)>")


def split_regex(text: str) -> tuple[str, str]:
    """``/re/flags`` or ``m{re}flags`` -> (re, flags).  Raises ValueError when malformed."""
    text = text.strip()
    if not text:
        raise ValueError("missing regular expression")
    if text[0] == "m" and len(text) > 1 and not text[1].isalnum() and not text[1].isspace():
        text = text[1:]
    elif text[0] != "/":
        raise ValueError(f"expected /regex/ or m{{regex}}, got {text[:30]!r}")
    open_ = text[0]
    close = _BRACKETS.get(open_, open_)
    depth = 0
    i = 1
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if close != open_ and c == open_:
            depth += 1
        elif c == close:
            if depth == 0:
                break
            depth -= 1
        i += 1
    else:
        raise ValueError("regular expression is not closed")
    body, flags = text[1:i], text[i + 1 :].strip()
    if not re.fullmatch(r"[imsxopagcdlun]*", flags):
        raise ValueError(f"unknown regex flags {flags!r}")
    # Flags without a meaning for a single test (g, o, p...) are dropped; i m s x are kept.
    return body, "".join(f for f in "imsx" if f in flags)


def parse_eval_args(text: str) -> tuple[object, ...]:
    """The arguments of ``eval:f('a', 2, "b")``: quoted strings and numbers only (no code runs)."""
    args: list[object] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = re.compile(r"""\s*(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)"|(-?\d+(?:\.\d+)?)|([A-Za-z_][\w:.-]*))\s*(?:,|$)""").match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"cannot read eval arguments {text!r}")
        if m.group(1) is not None or m.group(2) is not None:
            args.append(m.group(1) if m.group(1) is not None else m.group(2))
        elif m.group(3) is not None:
            num = m.group(3)
            args.append(float(num) if "." in num else int(num))
        else:
            args.append(m.group(4))
        pos = m.end()
    return tuple(args)


class _Cond:
    """One level of ``if``/``ifplugin`` nesting."""

    __slots__ = ("active", "parent_active", "where")

    def __init__(self, active: bool, parent_active: bool, where: Where):
        self.active = active
        self.parent_active = parent_active
        self.where = where


class Parser:
    """Reads rule files; call :meth:`read_dir` / :meth:`read_file`, then take :attr:`result`."""

    def __init__(self, plugins: Iterable[str] = (), version: float = SA_VERSION):
        self.result = ParsedRules()
        self.result.plugins.update(plugins)
        self.version = version
        self._replace_tags: dict[str, str] = {}
        self._replace_rules: dict[str, Where] = {}
        self._seen: set[Path] = set()

    # ------------------------------------------------------------------ files

    def read_dir(self, directory: str | Path, pre_dirs: Iterable[str | Path] = ()) -> None:
        """``*.pre`` files of ``pre_dirs`` (plugin loading), then ``directory``'s ``*.pre`` and ``*.cf`` in name order."""
        for d in pre_dirs:
            for p in sorted(Path(d).glob("*.pre")):
                self.read_file(p)
        d = Path(directory)
        if not d.is_dir():
            self._problem(None, "error", f"rules directory not found: {d}")
            return
        for p in sorted(d.glob("*.pre")):
            self.read_file(p)
        for p in sorted(d.glob("*.cf")):
            self.read_file(p)

    def read_file(self, path: str | Path) -> None:
        p = Path(path)
        key = p.resolve()
        if key in self._seen:
            return
        self._seen.add(key)
        try:
            data = p.read_bytes()
        except OSError as exc:
            self._problem(None, "error", f"cannot read {p}: {exc.strerror or exc}")
            return
        self.result.files.append(str(p))
        self.read_text(data.decode("utf-8", "surrogateescape"), str(p), p.parent)

    def read_text(self, text: str, filename: str = "<text>", base: Path | None = None) -> None:
        stack: list[_Cond] = []
        for lineno, line in enumerate(text.splitlines(), 1):
            where = Where(filename, lineno)
            line = _strip_comment(line).strip()
            if not line:
                continue
            word, rest = _split1(line)
            active = all(c.active for c in stack)
            if word in ("if", "ifplugin"):
                cond = self._eval_if(rest, where) if word == "if" else rest.strip() in self.result.plugins
                stack.append(_Cond(cond, active, where))
                continue
            if word == "else":
                if not stack:
                    self._problem(where, "error", "else without if")
                else:
                    stack[-1].active = not stack[-1].active
                continue
            if word == "endif":
                if not stack:
                    self._problem(where, "error", "endif without if")
                else:
                    stack.pop()
                continue
            if not active:
                continue
            self.result.text.append(line)
            try:
                self._line(word, rest, where, base)
            except ValueError as exc:
                self._problem(where, "error", str(exc), _rule_of(word, rest))
        for c in stack:
            self._problem(c.where, "error", "if/ifplugin block is not closed by endif")

    def finish(self) -> ParsedRules:
        """Apply ReplaceTags and check what can be checked before compiling."""
        for name, where in self._replace_rules.items():
            rule = self.result.rules.get(name)
            if rule is None:
                self._problem(where, "ignored", "replace_rules names a rule that is not defined", name)
                continue
            if rule.pattern is None:
                continue
            try:
                rule.pattern = self._apply_tags(rule.pattern)
                rule.notes.append("replace_tags")
            except ValueError as exc:
                self._problem(rule.where, "error", str(exc), name)
                rule.pattern = None
                rule.broken = True
        for rule in self.result.rules.values():
            if rule.kind not in RULE_KINDS or rule.broken:
                continue
            if rule.pattern is None and rule.eval_name is None and rule.expr is None and rule.exists is None:
                self._problem(rule.where, "error", "rule has tflags/score/describe but no test", rule.name)
                rule.broken = True
        return self.result

    # ------------------------------------------------------------------ lines

    def _line(self, word: str, rest: str, where: Where, base: Path | None) -> None:
        if word == "lang":
            # Translations of descriptions: the untranslated line is the one used.
            self._problem(where, "ignored", "lang: translated text is not used")
            return
        if word in RULE_KINDS:
            name, spec = _split1(rest)
            if not _NAME_RE.match(name):
                raise ValueError(f"bad rule name {name!r}")
            self._rule(word, name, spec, where)
            return
        if word in ("score", "describe", "tflags", "priority"):
            name, value = _split1(rest)
            rule = self.result.rules.get(name)
            if rule is None:
                # SpamAssassin allows score before the rule; keep it for later.
                rule = RuleDef(name=name, kind="pending", where=where)
                self.result.rules[name] = rule
            if word == "score":
                nums = value.split()
                try:
                    vals = [float(v.strip("()")) for v in nums]
                except ValueError:
                    raise ValueError(f"bad score {value!r}") from None
                if not vals:
                    raise ValueError("score without a value")
                # Four scores are SpamAssassin's sets (net x bayes); this engine has a
                # classifier and no network rules here, which is set 2.
                rule.score = vals[2] if len(vals) == 4 else vals[0]
                rule.score_sets = tuple(vals)
            elif word == "describe":
                rule.description = value
            elif word == "tflags":
                flags = set()
                for f in value.split():
                    if f.startswith("maxhits="):
                        try:
                            rule.maxhits = int(f[8:])
                        except ValueError:
                            raise ValueError(f"bad maxhits {f!r}") from None
                        flags.add("multiple")
                    else:
                        flags.add(f)
                rule.tflags = frozenset(flags)
            else:
                try:
                    rule.priority = int(value)
                except ValueError:
                    raise ValueError(f"bad priority {value!r}") from None
            return
        if word == "include":
            target = (base or Path(".")) / rest
            if not target.exists():
                raise ValueError(f"include: file not found: {target}")
            self.read_file(target)
            return
        if word == "loadplugin":
            self.result.plugins.add(rest.split()[0])
            return
        if word == "require_version":
            return
        if word in ("replace_tag", "replace_pre", "replace_inter", "replace_post"):
            name, value = _split1(rest)
            self._replace_tags[name] = value
            return
        if word in ("replace_start", "replace_end"):
            if rest != ("<" if word == "replace_start" else ">"):
                raise ValueError(f"{word}: only < and > are supported")
            return
        if word == "replace_rules":
            for n in rest.split():
                self._replace_rules[n] = where
            return
        if word in _KNOWN_FOREIGN or word.startswith(("util_rb_", "bayes_", "dns_", "txrep_", "auto_whitelist", "whitelist", "welcomelist", "blacklist", "blocklist")):
            self._problem(where, "ignored", f"{word}: SpamAssassin setting not used by this engine")
            return
        self._problem(where, "ignored", f"unknown directive {word!r}")

    def _rule(self, kind: str, name: str, spec: str, where: Where) -> None:
        old = self.result.rules.get(name)
        rule = RuleDef(name=name, kind=kind, where=where)
        if old is not None:
            # Later definitions replace earlier ones (SpamAssassin's behaviour); keep the
            # score/describe/tflags that may have been given first.
            rule.score, rule.description, rule.tflags = old.score, old.description, old.tflags
            rule.score_sets = old.score_sets
            rule.maxhits, rule.priority = old.maxhits, old.priority
        self.result.rules[name] = rule
        if kind == "meta":
            if not spec:
                raise ValueError("meta without an expression")
            rule.expr = spec
            return
        if spec.startswith("eval:"):
            m = _EVAL_RE.match(spec)
            if not m:
                rule.broken = True
                raise ValueError(f"bad eval: {spec!r}")
            rule.eval_name = m.group(1)
            try:
                rule.eval_args = parse_eval_args(m.group(2))
            except ValueError:
                rule.broken = True
                raise
            return
        if kind in ("header", "mimeheader"):
            if spec.startswith("exists:") and kind == "header":
                rule.exists = spec[7:].strip()
                if not rule.exists:
                    rule.broken = True
                    raise ValueError("exists: without a header name")
                return
            if_unset = None
            mu = _IF_UNSET_RE.search(spec)
            if mu:
                if_unset = mu.group(1)
                spec = spec[: mu.start()]
            m = _HEADER_SPEC_RE.match(spec)
            if not m:
                rule.broken = True
                raise ValueError(f"header rule needs 'Name =~ /re/', got {spec!r}")
            hname = m.group(1)
            accessors = re.findall(r":(\w+)", spec[: spec.find(m.group(3))])
            if ":" in hname:
                hname, _, acc = hname.partition(":")
                accessors.insert(0, acc)
            accessor = "+".join(accessors)
            rule.target = HeaderTarget(hname, accessor, if_unset)
            rule.negate = m.group(3) == "!~"
            regex_text = m.group(4)
        else:
            regex_text = spec
        try:
            rule.pattern, rule.flags = split_regex(regex_text)
        except ValueError:
            rule.broken = True
            raise

    def _apply_tags(self, pattern: str) -> str:
        """Expand ``<TAG>`` placeholders (ReplaceTags).

        ``<pre X>``, ``<post X>`` and ``<inter X>`` set what goes before each
        tag, after each tag, and between two adjacent tags; then every
        ``<TAG>`` becomes pre + value + post.  Tags may use other tags, so the
        expansion runs to a fixed point.
        """
        mods = {"pre": "", "post": "", "inter": ""}

        def directive(m: re.Match[str]) -> str:
            kind, name = m.group(1), m.group(2)
            if name not in self._replace_tags:
                raise ValueError(f"replace tag {name!r} is not defined")
            mods[kind] = self._replace_tags[name]
            return ""

        pattern = re.sub(r"<(pre|post|inter)\s+([^<>\s]+)>", directive, pattern)
        if mods["inter"]:
            pattern = re.sub(r"(?<=>)(?=<[^<>\s]+>)", lambda m: "\0INTER\0", pattern)

        def one(m: re.Match[str]) -> str:
            tag = m.group(1)
            if tag in self._replace_tags:
                return mods["pre"] + self._replace_tags[tag] + mods["post"]
            return m.group(0)

        for _ in range(5):
            new = _TAG_RE.sub(one, pattern)
            if new == pattern:
                break
            pattern = new
        return pattern.replace("\0INTER\0", mods["inter"])

    def _eval_if(self, expr: str, where: Where) -> bool:
        """``if`` conditions: version comparisons, ``plugin(X)``, ``can(X)``, ``!``, ``&&``, ``||``, parens."""
        out: list[str] = []
        pos = 0
        s = expr.strip()
        tok = re.compile(r"\s*(?:(version)|plugin\(\s*([\w:]+)\s*\)|can\(\s*([\w:]+)\s*\)|(\d+(?:\.\d+)?)|(>=|<=|==|!=|>|<|&&|\|\||!|\(|\)))")
        while pos < len(s):
            m = tok.match(s, pos)
            if not m:
                self._problem(where, "warning", f"cannot evaluate if {expr!r}; treated as false")
                return False
            pos = m.end()
            if m.group(1):
                out.append(repr(self.version))
            elif m.group(2):
                out.append(str(m.group(2) in self.result.plugins))
            elif m.group(3):
                out.append(str(m.group(3).rsplit("::", 1)[-1] in FEATURES))
            elif m.group(4):
                out.append(m.group(4))
            else:
                out.append({"&&": " and ", "||": " or ", "!": " not "}.get(m.group(5), m.group(5)))
        try:
            # Only whitelisted tokens reach eval: numbers, True/False, comparisons, and/or/not, parens.
            return bool(eval("".join(out), {"__builtins__": {}}, {}))  # noqa: S307
        except Exception:
            self._problem(where, "warning", f"cannot evaluate if {expr!r}; treated as false")
            return False

    def _problem(self, where: Where | None, severity: str, message: str, rule: str | None = None) -> None:
        self.result.problems.append(Problem(where, severity, message, rule))


_COMMENT_RE = re.compile(r"(?<!\\)#.*$")
_WS1_RE = re.compile(r"\s+")


def _strip_comment(line: str) -> str:
    """Drop a ``#`` comment: everything from an unescaped ``#`` (write ``\\#`` for a literal one)."""
    return _COMMENT_RE.sub("", line) if "#" in line else line


def _split1(text: str) -> tuple[str, str]:
    """First word and the rest, split on any run of blanks."""
    parts = _WS1_RE.split(text.strip(), maxsplit=1)
    return parts[0], (parts[1].strip() if len(parts) > 1 else "")


def _rule_of(word: str, rest: str) -> str | None:
    if word in RULE_KINDS or word in ("score", "describe", "tflags", "priority"):
        return rest.split(" ", 1)[0] or None
    return None


def parse_paths(paths: Iterable[str | Path], *, plugins: Iterable[str] = (), pre_dirs: Iterable[str | Path] = ()) -> ParsedRules:
    """Parse rule directories and files (directories: ``*.pre`` then ``*.cf`` in name order)."""
    parser = Parser(plugins)
    for d in pre_dirs:
        for p in sorted(Path(d).glob("*.pre")):
            parser.read_file(p)
    for path in paths:
        p = Path(path)
        if p.is_dir():
            parser.read_dir(p)
        else:
            parser.read_file(p)  # a missing file is reported as unreadable, with the reason
    return parser.finish()
