"""SpamAssassin compatibility: the Debian ``spamassassin`` rules load, and both engines agree on them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from antispam.check import ScanContext
from antispam.config import Config
from antispam.message import Message
from antispam.ruleset.check import RuleHits, RulesCheck, load_rules
from antispam.ruleset.cli import SA_KINDS
from antispam.ruleset.compiler import compile_rules
from antispam.ruleset.matcher import hyperscan_available
from antispam.ruleset.parser import Parser

SA_DIR = Path("/usr/share/spamassassin")
SA_PRE = Path("/etc/spamassassin")


@pytest.fixture(scope="module")
def sa_dir():
    if not (SA_DIR / "50_scores.cf").exists():
        if os.environ.get("CI"):
            pytest.fail("the spamassassin package is required under CI (.ci/apt-rules.txt)")
        pytest.skip("SpamAssassin rules not installed (apt-get install spamassassin)")
    return SA_DIR


def test_sa_ruleset_mostly_accepted(sa_dir):
    parser = Parser()
    for f in sorted(SA_PRE.glob("*.pre")):
        parser.read_file(f)
    parser.read_dir(sa_dir)
    compiled = compile_rules(parser.finish(), lenient_meta=True)
    r = compiled.report
    usable = sum(r.accepted[k] + r.translated[k] for k in SA_KINDS)
    total = usable + sum(r.refused[k] for k in SA_KINDS)
    assert total > 2000
    assert usable / total >= 0.90, r
    # every refusal is explained with file:line
    for p in compiled.errors():
        assert p.where is not None and p.where.line > 0 and p.message


@pytest.mark.skipif(not hyperscan_available(), reason="hyperscan not installed")
def test_engines_agree_on_sa_rules(sa_dir, corpus, tmp_path):
    files = [sa_dir / n for n in ("20_body_tests.cf", "20_head_tests.cf", "20_uri_tests.cf", "20_html_tests.cf",
                                  "20_ratware.cf")]
    pre = [SA_PRE] if SA_PRE.is_dir() else []
    checks = [RulesCheck(load_rules([], sa_paths=files, sa_pre_dirs=pre, engine=e, cache_dir=tmp_path))
              for e in ("python", "hyperscan")]
    assert len(checks[0].compiled.rules) > 300
    fired = 0
    for m in corpus[::40]:
        seen = []
        for check in checks:
            msg = Message(m.data)
            ctx = ScanContext(msg.envelope, Config())
            hits = check.run(msg, ctx)
            seen.append((dict(ctx.get(RuleHits).counts), {h.symbol: h.options for h in hits}))
        assert seen[0] == seen[1], m.name
        fired += len(seen[0][0])
    assert fired > 100


@pytest.mark.parametrize("engine", ["python", "hyperscan"])
def test_foreign_rules_on_the_python_matcher_are_warned_about(tmp_path, caplog, engine):
    """SpamAssassin's rules are loaded as written, and some take the square of a field's length under
    ``re`` (8 KB of line breaks: up to 2 s a scan): the operator is told to run Hyperscan with them."""
    from antispam.ruleset.check import load_rules

    if engine == "hyperscan" and not hyperscan_available():
        pytest.skip("hyperscan not installed")
    (tmp_path / "local.cf").write_text("body LOCAL_X /xyzzy/\nscore LOCAL_X 1.0\n")
    with caplog.at_level("WARNING", logger="antispam.rules"):
        load_rules([], sa_paths=[tmp_path], engine=engine, cache_dir=None)
    warned = [r for r in caplog.records if "install hyperscan" in r.getMessage()]
    assert len(warned) == (engine == "python")


_HEAD = ("From: Ann <ann@example.com>\nTo: bob@example.org\nSubject: news\nDate: Mon, 1 Jan 2024 10:00:00 +0000\n"
         "Message-Id: <1@example.com>\nMIME-Version: 1.0\n")


@pytest.fixture(scope="module")
def sa_check(sa_dir):
    """Every SpamAssassin rule, on the Python matcher (no Hyperscan compilation: seconds, not minutes)."""
    pre = [SA_PRE] if SA_PRE.is_dir() else []
    return RulesCheck(load_rules([], sa_paths=[sa_dir], sa_pre_dirs=pre, engine="python", every_rule=True))


def _sa_hits(check: RulesCheck, raw: str) -> dict[str, int]:
    msg = Message(raw.encode())
    ctx = ScanContext(msg.envelope, Config())
    check.run(msg, ctx)
    return dict(ctx.get(RuleHits).counts)


def test_sa_html_image_only_measures_the_html_source(sa_check):
    """HTML_IMAGE_ONLY_*: SpamAssassin's bands are of the HTML part's length, markup included
    (spamd -L gives this message HTML_IMAGE_ONLY_12: 984 characters of HTML, 8 of text)."""
    html = '<html><body><!-- ' + 'x' * 900 + ' --><img src="http://img.example.com/a.png">Hi there</body></html>\n'
    hits = _sa_hits(sa_check, _HEAD + "Content-Type: text/html; charset=us-ascii\n\n" + html)
    assert [n for n in hits if n.startswith("HTML_IMAGE_ONLY_")] == ["HTML_IMAGE_ONLY_12"]


def test_own_rules_keep_their_html_image_only():
    """The same eval name in this project's rules still counts visible characters: only the rules
    read from SpamAssassin's files get its variant."""
    from antispam.ruleset.evals import eval_function, html_image_only, sa_html_image_only

    assert eval_function("html_image_only").fn is html_image_only
    assert eval_function("html_image_only", spamassassin=True).fn is sa_html_image_only
    assert eval_function("check_for_mime", spamassassin=True) is eval_function("check_for_mime")


def test_rules_from_sa_dirs_get_the_sa_variant(tmp_path):
    rule = "body IMG_SHORT eval:html_image_only('0', '150')\nscore IMG_SHORT 1\n"
    (tmp_path / "sa").mkdir()
    (tmp_path / "own").mkdir()
    (tmp_path / "sa" / "r.cf").write_text(rule)
    (tmp_path / "own" / "r.cf").write_text(rule)
    html = '<html><body><img src="http://img.example.com/a.png">' + "word " * 30 + "</body></html>\n"
    raw = _HEAD + "Content-Type: text/html\n\n" + html
    sa = RulesCheck(load_rules([], sa_paths=[tmp_path / "sa"], engine="python"))
    own = RulesCheck(load_rules([tmp_path / "own"], engine="python"))
    assert "IMG_SHORT" not in _sa_hits(sa, raw)  # 217 characters of HTML
    assert "IMG_SHORT" in _sa_hits(own, raw)  # 120 visible characters


def test_sa_uri_list_holds_mailto_links(sa_check):
    """KHOP_UNSUB_EMAIL (an unsubscribe address, no unsubscribe link): SpamAssassin's uri list holds
    the addresses of the text as mailto: links, so a list footer's address is a link to unsubscribe
    and the rule stays quiet (as spamd -L does on this message)."""
    footer = ("Hello all,\n\nthe meeting moved to Tuesday.\n\n--\nTo unsubscribe from this group, send an email to:\n"
              "team-unsubscribe@lists.example.com\n")
    hits = _sa_hits(sa_check, _HEAD + "Content-Type: text/plain\n\n" + footer)
    assert "__UNSUB_EMAIL" in hits and "__UNSUB_LINK" in hits
    assert "KHOP_UNSUB_EMAIL" not in hits


def test_sa_uri_links_are_found_as_spamassassin_finds_them():
    from antispam.ruleset.sa_uri import sa_uri_links

    html = ('<p>Write to <a href="mailto:owner@lists.example.org?subject=unsubscribe">us</a> or see '
            '<a href="http://www.example.com/">the site</a></p>\n')
    text = ("Mail (help@example.com), e-mail:joe@shop.co.uk; not bad@nodot, x@y.zz, cid:img1@01D4.E345,\n"
            "nor the user in http://www.example.net/a?u=b@c.example.com; mail%2Dme@ex%61mple.com.\n")
    raw = (_HEAD.replace("Subject: news", "Subject: or sales@example.com")
           + 'Content-Type: multipart/alternative; boundary="B"\n\n'
           f"--B\nContent-Type: text/plain\n\n{text}--B\nContent-Type: text/html\n\n{html}--B--\n")
    links = sa_uri_links(Message(raw.encode()))
    assert [u.url for u in links if not u.url.startswith("mailto:")] == ["http://www.example.com/",
                                                                         "http://www.example.net/a?u=b@c.example.com"]
    assert [(u.url, u.host) for u in links if u.url.startswith("mailto:")] == [
        ("mailto:owner@lists.example.org?subject=unsubscribe", "lists.example.org"),
        ("mailto:owner@lists.example.org", "lists.example.org"),
        ("mailto:sales@example.com", "example.com"),
        ("mailto:help@example.com", "example.com"),
        ("mailto:joe@shop.co.uk", "shop.co.uk"),
        ("mailto:mail-me@example.com", "example.com"),
    ]


def test_only_rules_from_sa_dirs_read_mailto_links(tmp_path):
    """This project's uri rules read the web links only (its AS_URI_UNSUB would otherwise hit every
    list footer with an address); a uri rule read from SpamAssassin's files reads its list, and its
    hit names the address's domain."""
    rule = "uri UNSUB_URI /unsubscribe/i\nscore UNSUB_URI 1\n"
    (tmp_path / "sa").mkdir()
    (tmp_path / "own").mkdir()
    (tmp_path / "sa" / "r.cf").write_text(rule)
    (tmp_path / "own" / "r.cf").write_text(rule)
    raw = (_HEAD + "Content-Type: text/plain\n\nSee http://www.example.com/news\n"
           "To leave, write to team-unsubscribe@lists.example.com\n")
    sa = RulesCheck(load_rules([], sa_paths=[tmp_path / "sa"], engine="python"))
    own = RulesCheck(load_rules([tmp_path / "own"], engine="python"))
    msg = Message(raw.encode())
    assert [(h.symbol, h.options) for h in sa.run(msg, ScanContext(msg.envelope, Config()))] == [
        ("UNSUB_URI", ("lists.example.com",))]
    assert "UNSUB_URI" not in _sa_hits(own, raw)


def test_sa_body_rules_read_blanks_collapsed(sa_check, tmp_path):
    """SpamAssassin's body text has every run of blanks made one space: a line broken after a
    blank ("Financial \\nIndependence") reads with one space, and FIN_FREE hits (as with spamd -L);
    this project's body rules keep reading the text's own spacing."""
    text = ("For more money-saving tips to aid your journey to Financial \n"
            "Independence, visit our Personal Finance area.\n")
    raw = _HEAD + "Content-Type: text/plain\n\n" + text
    assert "FIN_FREE" in _sa_hits(sa_check, raw)
    (tmp_path / "r.cf").write_text("body TWO_BLANKS /Financial  Independence/\nscore TWO_BLANKS 1\n")
    assert "TWO_BLANKS" in _sa_hits(RulesCheck(load_rules([tmp_path], engine="python")), raw)


def test_sa_html_includes_attached_html_files(sa_check):
    """SpamAssassin reads a part named like an HTML file as HTML whatever its type: an attached
    offer.html with an <html> tag and an image is no HTML_MIME_NO_HTML_TAG but HTML_IMAGE_ONLY_04
    (as spamd -L says of this message)."""
    import base64

    page = base64.encodebytes(b'<html><head><title>x</title></head><body><img src="http://img.example.com/a.png">'
                              b"Order now</body></html>\r\n").decode()
    raw = (_HEAD + 'Content-Type: multipart/mixed; boundary="B"\n\n'
           '--B\nContent-Type: text/html; charset="iso-8859-1"\n\n'
           "<p>To order please open <b>offer.html</b> in the attachment</p>\n"
           '--B\nContent-Type: application/octet-stream; name="offer.html"\nContent-Transfer-Encoding: base64\n'
           'Content-Disposition: attachment; filename="offer.html"\n\n' + page + "--B--\n")
    hits = _sa_hits(sa_check, raw)
    assert "MIME_HTML_ONLY" in hits and "__TAG_EXISTS_HTML" in hits
    assert "HTML_MIME_NO_HTML_TAG" not in hits
    assert [n for n in hits if n.startswith("HTML_IMAGE_ONLY_")] == ["HTML_IMAGE_ONLY_04"]


def test_mimeheader_rules_match_each_part_alone(sa_check, tmp_path):
    """A mimeheader rule tests each part's header on its own, as SpamAssassin does: ``^...$`` holds
    for one of two images' Content-IDs (spamd -L gives this message PART_CID_STOCK and
    PART_CID_STOCK_LESS), and a pattern that could run on into the next value does not."""
    gif = "R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7\n"
    raw = (_HEAD + 'Content-Type: multipart/related; boundary="B"\n\n'
           '--B\nContent-Type: text/html\n\n<html><body><img src="cid:001f01c232ad$3ee2d7e0$7f16e7d8@mailbox">'
           "</body></html>\n"
           '--B\nContent-Type: image/gif; name="image001.gif"\nContent-Transfer-Encoding: base64\n'
           "Content-ID: <001f01c232ad$3ee2d7e0$7f16e7d8@mailbox>\n\n" + gif +
           '--B\nContent-Type: image/gif; name="image002.gif"\nContent-Transfer-Encoding: base64\n'
           "Content-ID: <002001c232ad$3ee5e520$7f16e7d8@mailbox>\n\n" + gif + "--B--\n")
    hits = _sa_hits(sa_check, raw)
    assert "PART_CID_STOCK" in hits and "PART_CID_STOCK_LESS" in hits
    (tmp_path / "r.cf").write_text("mimeheader CID_ONE Content-ID =~ /^<001f\\S+>$/\n"
                                   "mimeheader CID_SPAN Content-ID =~ /mailbox>\\s<002/\n")
    for engine in ("python", "hyperscan") if hyperscan_available() else ("python",):
        own = _sa_hits(RulesCheck(load_rules([tmp_path], engine=engine, cache_dir=None)), raw)
        assert "CID_ONE" in own and "CID_SPAN" not in own, engine


@pytest.mark.parametrize("link, forms", [
    # SpamAssassin 4.0.1's own list of each (its uri_list_canonicalize, run in Perl), the link as written left out
    ("http://8%31%2E%39.%38.%34%2F%4Eew%4Co%61nOp", ["http://81.9.8.4/NewLoanOp"]),
    ("http://freetravel@66.46.145.35/members/travel/", ["http://66.46.145.35/members/travel/"]),
    ("http:\\\\www.x.com?a=1", ["http://www.x.com/?a=1"]),
    ("http://www.x.com:80/a", ["http://www.x.com/a"]),
    ("http://0x42.0102.0.1/x", ["http://66.66..1/x"]),
    ("http://1113343453/", ["http://66.92.69.221/"]),
    ("http://foo/", ["http://www.foo.com/"]),
    ("http://a.com/r?u=http://b.example.org/x&y=1", ["http://b.example.org/x"]),
    ("www.x.com/&#46;&#x2e;&#12290;", ["http://www.x.com/..."]),
    ("http://www.example.com/", []),
])
def test_sa_uri_list_holds_the_forms_spamassassin_adds(link, forms):
    from antispam.ruleset.sa_uri import _web_variants

    assert sorted(set(_web_variants(link))) == forms


def test_sa_uri_rules_read_decoded_links(sa_check):
    """A link whose host is written in escapes is listed decoded too: NUMERIC_HTTP_ADDR and
    NORMAL_HTTP_TO_IP hit (as with spamd -L)."""
    hits = _sa_hits(sa_check, _HEAD + "Content-Type: text/plain\n\nApply at http://%38%31.9.8%2E%34%2Floans today.\n")
    assert "NUMERIC_HTTP_ADDR" in hits and "NORMAL_HTTP_TO_IP" in hits
