"""``antispam train`` and ``antispam eval`` (registered through ``antispam.cli.COMMAND_MODULES``)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Sequence

from ..corpus import LabelledMessage, default_corpus_dir, iter_messages, load_labelled
from ..errors import AntispamError
from .tokenizer import MAX_BITS, MIN_BITS


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train a classifier model (scikit-learn) and export it as numpy + JSON",
                       description="Train on labelled mail: --spam/--ham paths (files, directories, maildirs, "
                                   "mbox, .tar.gz), or --manifest DIR holding MANIFEST.tsv + <set>.tar.gz.")
    t.add_argument("--spam", nargs="+", default=[], metavar="PATH", help="spam sources")
    t.add_argument("--ham", nargs="+", default=[], metavar="PATH", help="ham sources")
    t.add_argument("--manifest", metavar="DIR", help="a labelled corpus directory (MANIFEST.tsv)")
    t.add_argument("--split", choices=("train", "test", "all"), default="train",
                   help="with --manifest: which split to train on (default train)")
    t.add_argument("-o", "--out", required=True, metavar="DIR",
                   help="model directory to write, e.g. models/mine (a model already there is replaced)")
    t.add_argument("--bits", type=_bits, default=None, help=f"feature space 2**BITS, {MIN_BITS}..{MAX_BITS} (default 20)")
    t.add_argument("--bigrams", action="store_true", help="add word bigram features")
    t.add_argument("--target-fpr", type=_fraction, default=0.002,
                   help="the default threshold keeps the cross-validated ham FPR at most this, 0..1 (default 0.002)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate the classifier and the engine on a labelled corpus",
                       description="Train on TRAIN and test on TEST (project split: sha256 first hex digit c-f "
                                   "is TEST), or run TREC-style online (classify, then learn, in order).")
    e.add_argument("--corpus", metavar="DIR", help="labelled corpus (default: the SpamAssassin corpus)")
    e.add_argument("--mode", choices=("split", "online"), default="split",
                   help="split: train on TRAIN, test on TEST (default); online: TREC style over the whole corpus")
    e.add_argument("--model", default="train", metavar="MODEL",
                   help="split: 'train' (fit on TRAIN now, default), 'default' (the shipped model) or a "
                        "directory; online: 'empty' (default for online), 'default' or a directory")
    e.add_argument("--no-engine", action="store_true", help="classifier only: skip the whole-engine scan")
    # _fraction, not float: nan or inf crashed the report at the end of the run (a traceback)
    e.add_argument("--target-fpr", type=_fraction, default=0.001,
                   help="report the threshold for this ham FPR, 0..1 (default 0.001)")
    e.add_argument("--json", metavar="FILE", help="write the JSON report here")
    e.add_argument("--roc", metavar="PNG", help="write the ROC plot here (needs matplotlib)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    e.set_defaults(func=cmd_eval)




def _bits(text: str) -> int:
    """``--bits``: checked here, as ``0`` once fell back silently to the default (``args.bits or 20``)."""
    try:
        bits = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not MIN_BITS <= bits <= MAX_BITS:
        raise argparse.ArgumentTypeError(f"{bits} is out of range: the feature space is 2**BITS, "
                                         f"BITS from {MIN_BITS} to {MAX_BITS}")
    return bits


def _fraction(text: str) -> float:
    """A rate from 0 to 1: ``nan``, a negative rate or one above 1 would train to a meaningless threshold."""
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(x) and 0.0 <= x <= 1.0):
        raise argparse.ArgumentTypeError(f"{text} is out of range: a rate from 0 to 1, e.g. 0.002")
    return x


def _out_problem(out: str) -> str | None:
    """Why the model directory ``out`` could not be written, if it could not: checked before
    training, which takes minutes, rather than after it, where it used to fail (FileExistsError when
    ``out`` is a file).  A model directory already there is replaced, as docs/classifier.md's retraining
    of ``models/default`` expects."""
    p = Path(out)
    if p.exists():
        if not p.is_dir():
            return f"{out} exists and is not a directory (a model is a directory: model.json and .npy files); " \
                   f"give another -o, or remove {out}"
        if (p / "model.json").is_dir():
            return f"{p / 'model.json'} is a directory; give another -o"
        return None if os.access(p, os.W_OK) else f"{out}: cannot write there (permission denied)"
    return _creatable(out, p)


def _creatable(out: str, p: Path) -> str | None:
    """Why ``p`` (not there yet) could not be created with its missing parents, if it could not: its
    nearest existing ancestor must be a writable directory."""
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot create {out}: {parent} is not a directory"
    return None if os.access(parent, os.W_OK) else f"cannot create {out}: {parent} is not writable"


def _file_problem(out: str) -> str | None:
    """Why the output file ``out`` could not be written, if it could not (checked before the run)."""
    p = Path(out)
    if p.is_dir():
        return f"{out} is a directory; give a file name"
    if p.exists():
        return None if os.access(p, os.W_OK) else f"{out}: cannot write there (permission denied)"
    return _creatable(out, p)  # its parents are created if missing (write_outputs)


def _say(msg: str) -> None:
    sys.stderr.write(msg + "\n")


def _examples(args: argparse.Namespace):
    from .train import Example

    if args.manifest:
        split = None if args.split == "all" else args.split
        return [Example(m.data, m.is_spam) for m in load_labelled(args.manifest, split=split)]
    out = []
    for paths, spam in ((args.spam, True), (args.ham, False)):
        for item in iter_messages(paths):
            if item.data is None:
                _say(f"skipped {item.source}: {item.error}")
                continue
            out.append(Example(item.data, spam))
    return out


def cmd_train(args: argparse.Namespace) -> int:
    try:
        from .train import train
    except ImportError as exc:  # pragma: no cover - depends on the environment
        _say(f"antispam train needs scikit-learn: pip install 'antispam[train]' ({exc})")
        return 2
    from .tokenizer import DEFAULT_BITS, TokenizerSpec

    if not args.manifest and not (args.spam and args.ham):
        _say("antispam train: give --spam and --ham sources, or --manifest DIR")
        return 2
    problem = _out_problem(args.out)
    if problem:
        _say(f"antispam train: {problem}")
        return 2
    try:
        examples = _examples(args)
    except AntispamError as exc:  # a missing MANIFEST.tsv or <set>.tar.gz (CorpusError)
        _say(f"antispam train: {exc}")
        return 2
    spec = TokenizerSpec(bits=args.bits if args.bits is not None else DEFAULT_BITS, bigrams=args.bigrams)
    try:
        model = train(examples, spec, target_fpr=args.target_fpr, progress=_say)
    except ValueError as exc:
        _say(f"antispam train: {exc}")
        return 2
    try:
        path = model.save(args.out)
    except OSError as exc:  # the directory changed under us while training
        _say(f"antispam train: cannot write the model to {args.out}: {exc.strerror or exc}")
        return 2
    cv = model.meta["cross_validation"]
    _say(f"wrote {path}: cross-validated AUC {cv['roc_auc']:.5f}, at p>={model.threshold:.4f} "
         f"ham FPR {cv['ham_fpr']:.4f} spam recall {cv['spam_recall']:.4f}")
    return 0


def _resolve_model(name: str, train_msgs: Sequence[LabelledMessage] | None):
    from .check import default_model
    from .eval import empty_model
    from .model import load_model

    if name == "default":
        return default_model()
    if name == "empty":
        return empty_model()
    if name == "train":
        from .train import Example, train

        assert train_msgs is not None
        return train([Example(m.data, m.is_spam) for m in train_msgs], progress=_say)
    return load_model(Path(name))


def cmd_eval(args: argparse.Namespace) -> int:
    from ..cli import Progress
    from . import eval as ev

    # ``is not None``: an empty --corpus '' (an unset shell variable) silently evaluated the default
    # corpus; now it names the current directory, as any relative path would
    corpus = Path(args.corpus) if args.corpus is not None else default_corpus_dir()
    if corpus is None:
        _say("antispam eval: no corpus found; give --corpus DIR (MANIFEST.tsv + <set>.tar.gz)")
        return 2
    # The report and plot paths are checked before the run, which takes minutes: a --json in a
    # missing directory or naming a directory crashed at the very end with a traceback.
    for flag, out in (("--json", args.json), ("--roc", args.roc)):
        problem = _file_problem(out) if out is not None else None
        if problem:
            _say(f"antispam eval: {flag} {problem}")
            return 2
    try:
        msgs = load_labelled(corpus)
        if args.mode == "split":
            train_msgs = [m for m in msgs if m.split == "train"]
            test_msgs = [m for m in msgs if m.split == "test"]
            model = _resolve_model(args.model, train_msgs)
            bar = Progress(not args.no_progress, len(test_msgs))
            scored, required = ev.run_split(model, test_msgs, engine=not args.no_engine, step=bar.step)
            bar.close()
            info = {"protocol": "split (train on TRAIN, test on TEST)", "model": args.model,
                    "train_messages": len(train_msgs)}
        else:
            model = _resolve_model("empty" if args.model == "train" else args.model, None)
            bar = Progress(not args.no_progress, len(msgs))
            scored = ev.run_online(model, msgs, step=bar.step)
            bar.close()
            required = None
            info = {"protocol": "online (TREC style: classify, then learn, in sha256 order)", "model": args.model}
    except (AntispamError, OSError, ValueError) as exc:
        _say(f"antispam eval: {exc}")
        return 2
    threshold = model.threshold
    rep = ev.report(scored, threshold, required, target_fpr=args.target_fpr, corpus=str(corpus), **info)
    try:
        notes = ev.write_outputs(rep, scored, Path(args.json) if args.json else None,
                                 Path(args.roc) if args.roc else None)
    except OSError as exc:  # the directory changed during the run
        _say(f"antispam eval: cannot write {exc.filename or 'the report'}: {exc.strerror or exc}")
        return 2
    for note in notes:
        _say(note)
    print(ev.format_report(rep))
    return 0
