"""Every message of the SpamAssassin corpus parses into every view without an exception."""

from __future__ import annotations

from collections import Counter

from antispam.message import Message


def test_whole_corpus_parses(corpus):
    assert len(corpus) == 6046
    defects: Counter[str] = Counter()
    with_text = 0
    for m in corpus:
        msg = Message(m.data).parse_all()
        defects.update(msg.defects)
        with_text += bool(msg.text.strip())
        assert isinstance(msg.subject, str)
    # Nearly every message has readable text; a handful are attachments only.
    assert with_text > 6000
    # Sanity: the corpus's known junk is seen as defects, not exceptions.
    assert defects["MIME_8BIT_UNDECLARED"] > 0


def test_split_sizes(corpus):
    test = [m for m in corpus if m.split == "test"]
    assert len(test) == 1495 and sum(m.is_spam for m in test) == 455
