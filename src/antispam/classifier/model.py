"""A trained classifier on disk and in memory: numpy arrays + JSON, never pickle.

Layout of ``models/<name>/``::

    model.json     metadata: format, tokenizer (version, seed, bits, bigrams), bias,
                   calibration, threshold, training-set digest, metrics, the sha256
                   of each array file, and example token strings of the strongest features
    indices.npy    uint32, the feature ids with a nonzero weight (sorted)
    weights.npy    float32, their weights

The arithmetic of a score (the kernel does the sum, see ``_fastscore_py.py``)::

    ids     = distinct feature ids of the message            (n of them)
    margin  = bias + (sum_i w[id_i] + sum_i d[id_i]) / sqrt(max(n, MIN_NORM_FEATURES))
    z       = (a * margin + b) * min(1, n / MIN_NORM_FEATURES)
    p(spam) = 1 / (1 + exp(-z))

Dividing by ``sqrt(n)`` is the L2 normalisation of the binary feature vector
the model was trained on (each present feature has value ``1/sqrt(n)``), so a
long message is not spammier just for having more words.  A message with
fewer than ``MIN_NORM_FEATURES`` distinct features (a one-line test mail has
about a dozen) carries little evidence, and two things keep the model from
judging it with full confidence: the normalisation floor (its few weights are
divided by ``sqrt(50)``, not by ``sqrt(12)``) and the evidence factor
``min(1, n / 50)`` that pulls its calibrated log-odds toward 0 (p = 0.5).
Without them the model's intercept alone, which is fitted to messages of
~200 features, decides tiny messages.  Cross-validation on TRAIN showed no
loss of accuracy from either at 50 (the evidence factor slightly raised
recall at 0.2% FPR; a floor of 100 or more lost accuracy).  ``d`` are the
per-feature adjustments learned online (:mod:`antispam.classifier.learn`);
``a`` and ``b`` are Platt scaling fitted on out-of-fold margins of the
training set, which turns the margin into a calibrated probability.

Loading checks the format, the tokenizer settings, every array's sha256, dtype
and shape, that the indices are strictly increasing, inside ``2**bits`` and as
many as ``nonzero`` says, that the weights and every number (bias,
calibration, threshold) are finite, the slope ``a`` positive and the threshold a
probability, and refuses anything else with a
:class:`~antispam.errors.ModelError` naming the file or field.
``np.load`` is always called with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import ModelError
from .tokenizer import MAX_BITS, MIN_BITS, TOKENIZER_VERSION, TokenizerSpec

MODEL_FORMAT = "antispam-linear-1"
#: see the module docstring: messages with fewer features are normalised as if they had this many
MIN_NORM_FEATURES = 50


def evidence(n: int) -> float:
    """How much of its calibrated log-odds a message with ``n`` features keeps (see the docstring)."""
    return min(1.0, n / MIN_NORM_FEATURES)


def feature_scale(n: int) -> float:
    """The value of each present feature in a message with ``n`` distinct features."""
    return 1.0 / math.sqrt(max(n, MIN_NORM_FEATURES))
_ARRAYS = ("indices", "weights")


@dataclass(frozen=True)
class Model:
    """A linear model over hashed features, ready to score."""

    spec: TokenizerSpec
    #: dense float32 weights, one per feature id (``2**bits`` of them)
    weights: np.ndarray
    bias: float
    #: Platt scaling: p = sigmoid(a * margin + b)
    calib_a: float = 1.0
    calib_b: float = 0.0
    #: the probability at and above which the classifier alone calls a message spam
    threshold: float = 0.5
    #: feature id -> an example token string (for readable clues)
    vocab: Mapping[int, str] = field(default_factory=dict)
    #: everything else from model.json (training digest, metrics, created, ...)
    meta: Mapping[str, Any] = field(default_factory=dict)

    def log_odds(self, margin: float, n: int) -> float:
        """Calibrated log-odds ``z = ln(p / (1 - p))`` of a message with ``n`` features and this margin."""
        return (self.calib_a * margin + self.calib_b) * evidence(n)

    def probability(self, margin: float, n: int) -> float:
        """Calibrated p(spam) of a message with ``n`` distinct features and this margin."""
        z = self.log_odds(margin, n)
        # Numerically safe logistic: exp never overflows.
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)

    def token_name(self, fid: int) -> str:
        return self.vocab.get(fid, f"#{fid}")

    # ------------------------------------------------------------------ disk

    def save(self, directory: str | Path) -> Path:
        """Write the model to ``directory`` (created); returns the path of model.json."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        nz = np.flatnonzero(self.weights).astype(np.uint32)
        arrays = {"indices": nz, "weights": self.weights[nz].astype(np.float32)}
        digests = {}
        for name, arr in arrays.items():
            path = d / f"{name}.npy"
            np.save(path, arr, allow_pickle=False)
            digests[name] = _sha256(path)
        meta = dict(self.meta)
        meta.update({
            "format": MODEL_FORMAT,
            "tokenizer": {"version": self.spec.version, "seed": self.spec.seed, "bits": self.spec.bits,
                          "bigrams": self.spec.bigrams},
            "bias": self.bias,
            "calibration": {"a": self.calib_a, "b": self.calib_b},
            "threshold": self.threshold,
            "nonzero": int(len(nz)),
            "arrays": digests,
            "vocab": {str(k): v for k, v in sorted(self.vocab.items())},
        })
        out = d / "model.json"
        out.write_text(json.dumps(meta, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
        return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _need(meta: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: Path, *,
          name: str | None = None, wrong: str = "of the wrong type") -> Any:
    """``meta[key]`` if it is a ``kind`` (a JSON true/false is no number), else a ModelError.

    ``name`` is the field as the error names it (``tokenizer.seed``), ``wrong`` what the error says of a
    value that is not a ``kind``.
    """
    v = meta.get(key)
    if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
        raise ModelError(f"{where}: model.json field {name or key!r} missing or {wrong}")
    return v


_MISSING: Any = object()


def _number(meta: Mapping[str, Any], key: str, where: Path, *, name: str | None = None,
            default: Any = _MISSING) -> float:
    """``meta[key]`` as a finite float (JSON int or float, not bool); ``default`` when absent, if given.

    ``name`` is the field as the error names it (``calibration.a``).
    """
    name = name or key
    if key not in meta:
        if default is _MISSING:
            raise ModelError(f"{where}: model.json field {name!r} is missing")
        return default
    v = meta[key]
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise ModelError(f"{where}: model.json field {name!r} must be a number, not {v!r}")
    try:
        f = float(v)
    except OverflowError:  # an int beyond the float range
        f = math.inf
    if not math.isfinite(f):
        raise ModelError(f"{where}: model.json field {name!r} must be finite, not {v!r}")
    return f


def _int(meta: Mapping[str, Any], key: str, where: Path, name: str) -> int:
    """``meta[key]``, a JSON integer (not ``20.0``, not ``true``); the error shows the value found."""
    return _need(meta, key, int, where, name=name, wrong=f"not an integer: {meta.get(key)!r}")


#: the highest threshold training writes: ``nextafter`` of a ham probability that rounded to 1.0
#: (a classifier that alone never calls a message spam)
_MAX_THRESHOLD = float(np.nextafter(1.0, 2.0))


def _read_regular(path: Path) -> bytes:
    """The bytes of ``path``, which must be a regular file; OSError otherwise.

    A model's files sit in a directory, so anything but a regular file there is damage or mischief,
    and reading it as a file was worse than refusing it: a FIFO (``mkfifo weights.npy``) hung the
    load for ever waiting for a writer, a link to ``/dev/zero`` read until memory ran out.  The
    file is opened non-blocking (so opening a FIFO does not wait) and checked on its descriptor
    (:func:`antispam.corpus.open_regular`).
    """
    from ..corpus import open_regular

    with open_regular(path) as fh:
        return fh.read()


def _load_array(path: Path, digest: Any, dtype: type) -> np.ndarray:
    """The verified 1-D ``dtype`` array of ``path``: read once, sha256 checked, then parsed (never unpickled)."""
    try:
        data = _read_regular(path)
    except FileNotFoundError:
        raise ModelError(f"{path}: missing") from None
    except OSError as exc:
        raise ModelError(f"{path}: unreadable: {exc.strerror or exc}") from None
    if hashlib.sha256(data).hexdigest() != digest:
        raise ModelError(f"{path}: sha256 does not match model.json (tampered or corrupted model)")
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # ValueError, EOFError, BadZipFile, ...: whatever a damaged file makes numpy raise
        raise ModelError(f"{path}: not a plain numpy array: {exc}") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive loads as an NpzFile
        raise ModelError(f"{path}: not a plain numpy array (.npy) but {type(arr).__name__}")
    if arr.dtype != dtype or arr.ndim != 1:
        raise ModelError(f"{path}: must be a 1-D {np.dtype(dtype).name} array, not {arr.ndim}-D {arr.dtype}")
    return arr


def load_model(directory: str | Path) -> Model:
    """Load and verify a model directory.  Raises ModelError for anything unexpected."""
    d = Path(directory)
    mpath = d / "model.json"
    try:
        meta = json.loads(_read_regular(mpath).decode("utf-8"))
    except FileNotFoundError:
        raise ModelError(f"no model at {d} (model.json not found)") from None
    except OSError as exc:
        raise ModelError(f"{mpath}: unreadable model metadata: {exc.strerror or exc}") from None
    except (ValueError, RecursionError) as exc:
        # RecursionError: json nests by recursion, so a file of 100,000 '[' crashed the load with a
        # traceback instead of this error
        raise ModelError(f"{mpath}: unreadable model metadata: {type(exc).__name__}: {exc}") from None
    if not isinstance(meta, dict):
        raise ModelError(f"{mpath}: metadata is not a JSON object")
    if meta.get("format") != MODEL_FORMAT:
        raise ModelError(f"{mpath}: unknown model format {meta.get('format')!r} (expected {MODEL_FORMAT!r})")
    tok = _need(meta, "tokenizer", dict, mpath)
    version = tok.get("version")
    if version != TOKENIZER_VERSION:
        raise ModelError(
            f"{mpath}: model was trained with tokenizer version {version!r}, this antispam has version "
            f"{TOKENIZER_VERSION}; retrain it with 'antispam train'")
    seed = _int(tok, "seed", mpath, "tokenizer.seed")
    bits = _int(tok, "bits", mpath, "tokenizer.bits")
    bigrams = tok.get("bigrams")
    if not isinstance(bigrams, bool):
        raise ModelError(f"{mpath}: model.json field 'tokenizer.bigrams' missing or not true/false: {bigrams!r}")
    if not MIN_BITS <= bits <= MAX_BITS or not 0 <= seed < 2**64:
        raise ModelError(f"{mpath}: tokenizer bits/seed out of range")
    spec = TokenizerSpec(version=TOKENIZER_VERSION, seed=seed, bits=bits, bigrams=bigrams)
    digests = _need(meta, "arrays", dict, mpath)
    ipath, wpath = d / "indices.npy", d / "weights.npy"
    idx = _load_array(ipath, digests.get("indices"), np.uint32)
    w = _load_array(wpath, digests.get("weights"), np.float32)
    if idx.shape != w.shape:
        raise ModelError(f"{d}: indices.npy and weights.npy differ in length ({len(idx)} != {len(w)})")
    if "nonzero" in meta and _int(meta, "nonzero", mpath, "nonzero") != len(idx):
        raise ModelError(f"{mpath}: model.json field 'nonzero' is {meta['nonzero']!r} but indices.npy "
                         f"has {len(idx)} entries")
    # Strictly increasing (as save() writes them): a duplicate would silently drop a weight.
    if len(idx) > 1 and not bool(np.all(idx[1:] > idx[:-1])):
        raise ModelError(f"{ipath}: feature ids are not strictly increasing (duplicate or unsorted)")
    if len(idx) and int(idx[-1]) >= spec.n_features:
        raise ModelError(f"{ipath}: feature id {int(idx[-1])} outside the 2**{spec.bits} features of "
                         f"'tokenizer.bits'")
    if not np.all(np.isfinite(w)):
        raise ModelError(f"{wpath}: non-finite weights")
    dense = np.zeros(spec.n_features, dtype=np.float32)
    dense[idx] = w
    bias = _number(meta, "bias", mpath)
    cal = _need(meta, "calibration", dict, mpath)
    calib_a = _number(cal, "a", mpath, name="calibration.a", default=1.0)
    calib_b = _number(cal, "b", mpath, name="calibration.b", default=0.0)
    if calib_a <= 0:
        raise ModelError(f"{mpath}: model.json field 'calibration.a' must be positive (a spammier margin "
                         f"is a higher probability), not {calib_a!r}")
    threshold = _number(meta, "threshold", mpath, default=0.5)
    if not 0.0 <= threshold <= _MAX_THRESHOLD:
        raise ModelError(f"{mpath}: model.json field 'threshold' is a probability, from 0 to 1, not {threshold!r}")
    vocab_raw = meta.get("vocab", {})
    if not isinstance(vocab_raw, dict):
        raise ModelError(f"{mpath}: vocab must be an object")
    try:
        vocab = {int(k): v for k, v in vocab_raw.items()}
    except ValueError:
        raise ModelError(f"{mpath}: vocab keys must be feature ids") from None
    # the values are token strings: anything else (a table, a list) was turned into its repr and
    # shown as a clue, where a wrong type in model.json is to be refused
    if not all(isinstance(v, str) for v in vocab.values()):
        raise ModelError(f"{mpath}: vocab values must be token strings")
    rest = {k: v for k, v in meta.items() if k not in ("vocab",)}
    return Model(spec=spec, weights=dense, bias=bias, calib_a=calib_a, calib_b=calib_b, threshold=threshold,
                 vocab=vocab, meta=rest)
