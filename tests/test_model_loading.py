"""Loading a damaged or inconsistent model directory raises ModelError naming the file or field.

Each case tampers with a copy of the shipped model (``_copy_default`` of test_classifier);
a changed array gets its sha256 re-recorded, so the damage is past the digest check.
"""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest

from antispam.classifier import default_model, load_model
from antispam.errors import ModelError
from test_classifier import _copy_default


def _edit(d, fn):
    meta = json.loads((d / "model.json").read_text())
    fn(meta)
    (d / "model.json").write_text(json.dumps(meta))


def _resha(d, name):
    digest = hashlib.sha256((d / f"{name}.npy").read_bytes()).hexdigest()
    _edit(d, lambda m: m["arrays"].__setitem__(name, digest))


def _save_array(d, name, arr):
    np.save(d / f"{name}.npy", arr)
    _resha(d, name)


def _refused(d, match):
    with pytest.raises(ModelError, match=match):
        load_model(d)


# ---------------------------------------------------------------- array files


def test_npz_instead_of_npy(tmp_path):
    d = _copy_default(tmp_path)
    buf = io.BytesIO()
    np.savez(buf, a=np.load(d / "weights.npy"))
    (d / "weights.npy").write_bytes(buf.getvalue())
    _resha(d, "weights")
    _refused(d, r"weights\.npy")


def test_array_file_is_a_directory(tmp_path):
    d = _copy_default(tmp_path)
    (d / "weights.npy").unlink()
    (d / "weights.npy").mkdir()
    _refused(d, r"weights\.npy")


def test_empty_array_file(tmp_path):
    d = _copy_default(tmp_path)
    (d / "indices.npy").write_bytes(b"")
    _resha(d, "indices")
    _refused(d, r"indices\.npy")


@pytest.mark.parametrize("name,arr", [("weights", np.zeros(48298, dtype=np.float64)),
                                      ("indices", np.zeros(48298, dtype=np.int64)),
                                      ("weights", np.zeros((2, 3), dtype=np.float32))])
def test_wrong_dtype_or_shape(tmp_path, name, arr):
    d = _copy_default(tmp_path)
    _save_array(d, name, arr)
    _refused(d, rf"{name}\.npy")


def test_duplicate_indices(tmp_path):
    d = _copy_default(tmp_path)
    idx = np.load(d / "indices.npy")
    idx[1] = idx[0]
    _save_array(d, "indices", idx)
    _refused(d, r"indices\.npy.*strictly increasing")


def test_unsorted_indices(tmp_path):
    d = _copy_default(tmp_path)
    idx = np.load(d / "indices.npy")
    idx[[0, 1]] = idx[[1, 0]]
    _save_array(d, "indices", idx)
    _refused(d, r"indices\.npy.*strictly increasing")


def test_index_outside_the_feature_space(tmp_path):
    d = _copy_default(tmp_path)
    idx = np.load(d / "indices.npy")
    bits = json.loads((d / "model.json").read_text())["tokenizer"]["bits"]
    idx[-1] = 1 << bits
    _save_array(d, "indices", idx)
    _refused(d, r"indices\.npy.*2\*\*20")


@pytest.mark.parametrize("value", [5, 48298 + 1, "48298", 48298.5, True, -1])
def test_nonzero_count_disagrees(tmp_path, value):
    d = _copy_default(tmp_path)
    _edit(d, lambda m: m.__setitem__("nonzero", value))
    _refused(d, "'nonzero'")


# ---------------------------------------------------------------- JSON scalars


def _set_cal(key, value):
    return lambda m: m["calibration"].__setitem__(key, value)


def _set(key, value):
    return lambda m: m.__setitem__(key, value)


@pytest.mark.parametrize("field,change", [
    ("calibration.a", _set_cal("a", "x")),
    ("calibration.a", _set_cal("a", None)),
    ("calibration.a", _set_cal("a", [1])),
    ("calibration.a", _set_cal("a", True)),
    ("calibration.b", _set_cal("b", "0")),
    ("threshold", _set("threshold", "high")),
    ("threshold", _set("threshold", None)),
    ("bias", _set("bias", "0.3")),
    ("bias", _set("bias", None)),
], ids=["a-str", "a-null", "a-list", "a-bool", "b-str", "thr-str", "thr-null", "bias-str", "bias-null"])
def test_scalar_of_the_wrong_type(tmp_path, field, change):
    d = _copy_default(tmp_path)
    _edit(d, change)
    _refused(d, "'" + field.replace(".", r"\.") + "'")


@pytest.mark.parametrize("field,change", [
    ("bias", _set("bias", float("nan"))),
    ("bias", _set("bias", float("-inf"))),
    ("calibration.a", _set_cal("a", float("inf"))),
    ("calibration.a", _set_cal("a", float("nan"))),
    ("calibration.b", _set_cal("b", float("nan"))),
    ("threshold", _set("threshold", float("nan"))),
], ids=["bias-nan", "bias-inf", "a-inf", "a-nan", "b-nan", "thr-nan"])
def test_non_finite_scalar(tmp_path, field, change):
    d = _copy_default(tmp_path)
    _edit(d, change)  # json.dumps writes NaN / Infinity, which json.loads reads back
    _refused(d, "'" + field.replace(".", r"\.") + "'")


@pytest.mark.parametrize("value", [7.0, 7, 1.01, -0.1])
def test_threshold_is_a_probability(tmp_path, value):
    d = _copy_default(tmp_path)
    _edit(d, _set("threshold", value))
    _refused(d, "'threshold'")


@pytest.mark.parametrize("value", [0.0, -7.3])
def test_calibration_slope_is_positive(tmp_path, value):
    d = _copy_default(tmp_path)
    _edit(d, _set_cal("a", value))
    _refused(d, r"'calibration\.a'")


@pytest.mark.parametrize("key,value", [("seed", 6.491668789969900017e18), ("bits", 20.0), ("bits", True),
                                       ("bigrams", 0)])
def test_tokenizer_settings_of_the_wrong_type(tmp_path, key, value):
    d = _copy_default(tmp_path)
    _edit(d, lambda m: m["tokenizer"].__setitem__(key, value))
    _refused(d, rf"'tokenizer\.{key}'")


# ---------------------------------------------------------------- still accepted


def test_shipped_model_loads_unchanged(tmp_path):
    d = _copy_default(tmp_path)
    meta = json.loads((d / "model.json").read_text())
    m = load_model(d)
    idx = np.load(d / "indices.npy")
    assert m.bias == meta["bias"] and m.threshold == meta["threshold"]
    assert (m.calib_a, m.calib_b) == (meta["calibration"]["a"], meta["calibration"]["b"])
    assert np.array_equal(np.flatnonzero(m.weights), idx) and len(idx) == meta["nonzero"]
    assert np.array_equal(m.weights[idx], np.load(d / "weights.npy"))
    assert np.array_equal(default_model().weights, m.weights)


def test_optional_fields_keep_their_defaults(tmp_path):
    d = _copy_default(tmp_path)

    def drop(m):
        del m["threshold"], m["nonzero"], m["calibration"]["a"], m["calibration"]["b"]

    _edit(d, drop)
    m = load_model(d)
    assert (m.calib_a, m.calib_b, m.threshold) == (1.0, 0.0, 0.5)


@pytest.mark.parametrize("value", [0.5, 1.0, float(np.nextafter(1.0, 2.0))])
def test_thresholds_training_can_write_load(tmp_path, value):
    """train() takes ``nextafter`` of a ham probability, which is above 1.0 when that probability rounded to 1.0."""
    d = _copy_default(tmp_path)
    _edit(d, _set("threshold", value))
    assert load_model(d).threshold == value


def test_empty_model_loads(tmp_path):
    d = _copy_default(tmp_path)
    _save_array(d, "indices", np.zeros(0, dtype=np.uint32))
    _save_array(d, "weights", np.zeros(0, dtype=np.float32))
    _edit(d, _set("nonzero", 0))
    assert not load_model(d).weights.any()
