"""Tests of simsam_jax.evaluation.statistics against scipy and known answers."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import scipy.stats

from simsam_jax.evaluation import statistics
from simsam_jax.evaluation.statistics import (compare_methods, paired_bootstrap_ci,
                                              summarize, wilcoxon_signed_rank)


def _paired_data(seed, n, effect, noise=0.05):
  rng = np.random.default_rng(seed)
  b = rng.uniform(0.3, 0.9, size=n)
  a = b + effect + noise * rng.standard_normal(n)
  return a, b


# ----------------------------------------------------------------------------
# summarize.
# ----------------------------------------------------------------------------


def test_summarize_population_std():
  values = np.random.default_rng(0).random(37)
  summary = summarize(values)
  assert summary["mean"] == pytest.approx(np.mean(values), abs=1e-15)
  assert summary["std"] == pytest.approx(np.std(values, ddof=0), abs=1e-15)
  assert summary["std"] != pytest.approx(np.std(values, ddof=1), abs=1e-6)
  assert summary["n"] == 37 and summary["n_nan"] == 0
  assert summarize([0.5, 1.0]) == {"mean": 0.75, "std": 0.25, "n": 2, "n_nan": 0}


def test_summarize_ignores_nan():
  values = np.array([0.2, np.nan, 0.4, 0.9, np.nan])
  summary = summarize(values)
  finite = values[~np.isnan(values)]
  assert summary["mean"] == pytest.approx(finite.mean(), abs=1e-15)
  assert summary["std"] == pytest.approx(finite.std(), abs=1e-15)
  assert (summary["n"], summary["n_nan"]) == (3, 2)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    for empty in ([], [np.nan, np.nan]):
      summary = summarize(empty)
      assert math.isnan(summary["mean"]) and math.isnan(summary["std"])
      assert summary["n"] == 0 and summary["n_nan"] == len(empty)
  with pytest.raises(ValueError, match="1-D"):
    summarize(np.zeros((2, 3)))


# ----------------------------------------------------------------------------
# Wilcoxon signed-rank.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("n,effect", [(12, 0.02), (30, 0.01), (30, 0.0), (80, 0.01),
                                      (200, -0.005)])
def test_wilcoxon_matches_scipy(n, effect):
  a, b = _paired_data(n, n, effect)
  result = wilcoxon_signed_rank(a, b)
  reference = scipy.stats.wilcoxon(a, b)
  assert result["statistic"] == reference.statistic
  assert result["p_value"] == reference.pvalue
  assert result["n"] == n and result["n_nonzero_differences"] == n
  assert result["n_dropped_nan"] == 0 and result["note"] is None
  assert result["zero_method"] == "wilcox"
  assert result["alternative"] == "two-sided"
  json.dumps(result, allow_nan=False)


def test_wilcoxon_with_zero_differences_and_ties_matches_scipy():
  a, b = _paired_data(5, 60, 0.01)
  a = np.round(a, 2)
  b = np.round(b, 2)
  a[:10] = b[:10]                           # ten exact zero differences
  result = wilcoxon_signed_rank(a, b)
  reference = scipy.stats.wilcoxon(a, b)
  assert result["p_value"] == reference.pvalue
  assert result["statistic"] == reference.statistic
  assert result["n"] == 60
  assert result["n_nonzero_differences"] == int(np.count_nonzero(a - b))
  for zero_method in ("pratt", "zsplit"):
    assert wilcoxon_signed_rank(a, b, zero_method)["p_value"] == (
        scipy.stats.wilcoxon(a, b, zero_method=zero_method).pvalue)


def test_wilcoxon_clear_effect_is_significant():
  a, b = _paired_data(1, 50, 0.05, noise=0.02)
  assert wilcoxon_signed_rank(a, b)["p_value"] < 1e-6
  assert wilcoxon_signed_rank(b, a)["p_value"] == pytest.approx(
      wilcoxon_signed_rank(a, b)["p_value"], rel=1e-9)


def test_wilcoxon_identical_samples():
  values = np.random.default_rng(2).random(25)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    result = wilcoxon_signed_rank(values, values.copy())
  assert result["p_value"] == 1.0 and result["statistic"] == 0.0
  assert result["n"] == 25 and result["n_nonzero_differences"] == 0
  assert "zero" in result["note"]


def test_wilcoxon_drops_nan_pairs():
  a, b = _paired_data(3, 40, 0.01)
  a_nan, b_nan = a.copy(), b.copy()
  a_nan[[1, 7]] = np.nan
  b_nan[[7, 20, 33]] = np.nan
  result = wilcoxon_signed_rank(a_nan, b_nan)
  keep = np.ones(40, dtype=bool)
  keep[[1, 7, 20, 33]] = False
  reference = scipy.stats.wilcoxon(a[keep], b[keep])
  assert result["p_value"] == reference.pvalue
  assert result["statistic"] == reference.statistic
  assert (result["n"], result["n_dropped_nan"]) == (36, 4)


def test_wilcoxon_without_pairs():
  for a, b in (([], []), ([np.nan, 1.0], [0.5, np.nan])):
    result = wilcoxon_signed_rank(a, b)
    assert math.isnan(result["p_value"]) and math.isnan(result["statistic"])
    assert result["n"] == 0 and result["note"]
  with pytest.raises(ValueError, match="same length"):
    wilcoxon_signed_rank([1.0, 2.0], [1.0])


# ----------------------------------------------------------------------------
# Paired bootstrap.
# ----------------------------------------------------------------------------


def test_bootstrap_clear_effect():
  a, b = _paired_data(4, 60, 0.1, noise=0.03)
  result = paired_bootstrap_ci(a, b)
  assert result["mean_difference"] == pytest.approx(np.mean(a - b), abs=1e-15)
  assert result["low"] < result["mean_difference"] < result["high"]
  assert result["low"] <= 0.1 <= result["high"]      # the true difference
  assert result["low"] > 0                           # excludes 0
  # Width close to the normal-theory interval, mean +- 1.96 sd / sqrt(n).
  half_width = 1.96 * np.std(a - b) / math.sqrt(60)
  assert (result["high"] - result["low"]) / 2 == pytest.approx(half_width, rel=0.1)
  json.dumps(result, allow_nan=False)


def test_bootstrap_no_effect_includes_zero():
  rng = np.random.default_rng(5)
  b = rng.uniform(0.3, 0.9, size=50)
  noise = 0.05 * rng.standard_normal(25)
  a = b + np.concatenate([noise, -noise])            # mean difference exactly 0
  result = paired_bootstrap_ci(a, b)
  assert result["mean_difference"] == pytest.approx(0.0, abs=1e-15)
  assert result["low"] < 0 < result["high"]


def test_bootstrap_is_deterministic_by_seed():
  a, b = _paired_data(6, 40, 0.02)
  first = paired_bootstrap_ci(a, b, n_resamples=2000, seed=3)
  assert paired_bootstrap_ci(a, b, n_resamples=2000, seed=3) == first
  other = paired_bootstrap_ci(a, b, n_resamples=2000, seed=4)
  assert (other["low"], other["high"]) != (first["low"], first["high"])
  assert other["mean_difference"] == first["mean_difference"]


def test_bootstrap_matches_a_plain_loop():
  a, b = _paired_data(8, 30, 0.02)
  result = paired_bootstrap_ci(a, b, n_resamples=500, confidence=0.9, seed=11)
  rng = np.random.default_rng(11)
  indices = rng.integers(0, 30, size=(500, 30))
  means = [np.mean((a - b)[row]) for row in indices]
  low, high = np.percentile(means, [5, 95])
  assert result["low"] == pytest.approx(low, abs=1e-12)
  assert result["high"] == pytest.approx(high, abs=1e-12)


def test_bootstrap_in_chunks(monkeypatch):
  monkeypatch.setattr(statistics, "_MAX_BOOTSTRAP_ELEMENTS", 100)
  a, b = _paired_data(9, 40, 0.1, noise=0.03)
  result = paired_bootstrap_ci(a, b, n_resamples=3001)
  assert result["low"] > 0 and result["low"] < result["mean_difference"] < result["high"]
  assert paired_bootstrap_ci(a, b, n_resamples=3001) == result


def test_bootstrap_drops_nan_pairs():
  a, b = _paired_data(10, 30, 0.02)
  a_nan, b_nan = a.copy(), b.copy()
  a_nan[3] = np.nan
  b_nan[[3, 12]] = np.nan
  keep = np.ones(30, dtype=bool)
  keep[[3, 12]] = False
  result = paired_bootstrap_ci(a_nan, b_nan, n_resamples=1000)
  reference = paired_bootstrap_ci(a[keep], b[keep], n_resamples=1000)
  assert (result["n"], result["n_dropped_nan"]) == (28, 2)
  for key in ("mean_difference", "low", "high"):
    assert result[key] == reference[key]
  empty = paired_bootstrap_ci([np.nan], [1.0])
  assert empty["n"] == 0 and math.isnan(empty["low"]) and math.isnan(empty["high"])


def test_bootstrap_bad_arguments():
  with pytest.raises(ValueError, match="n_resamples"):
    paired_bootstrap_ci([1.0], [0.0], n_resamples=0)
  with pytest.raises(ValueError, match="confidence"):
    paired_bootstrap_ci([1.0], [0.0], confidence=1.0)
  with pytest.raises(ValueError, match="same length"):
    paired_bootstrap_ci([1.0, 2.0], [0.0])


# ----------------------------------------------------------------------------
# compare_methods.
# ----------------------------------------------------------------------------


def _per_image():
  rng = np.random.default_rng(12)
  n = 40
  sam = {"dsc": rng.uniform(0.6, 0.95, n), "nsd": rng.uniform(0.2, 0.7, n),
         "iou": rng.uniform(0.5, 0.9, n)}
  simsam = {"dsc": sam["dsc"] + 0.001 * rng.standard_normal(n),
            "nsd": sam["nsd"] + 0.04 + 0.01 * rng.standard_normal(n),
            "iou": sam["iou"].copy()}
  simsam["nsd"][0] = np.nan
  sam_ft = {key: np.clip(value + 0.1, 0, 1) for key, value in sam.items()}
  return {"sam": sam, "simsam": simsam, "sam_ft": sam_ft}


def test_compare_methods():
  per_image = _per_image()
  result = compare_methods(per_image, n_resamples=1000)
  json.dumps(result)
  assert result["baseline"] == "sam"
  assert result["metrics"] == ["dsc", "nsd", "iou"]
  assert set(result["comparisons"]) == {"simsam", "sam_ft"}
  assert set(result["summaries"]) == {"sam", "simsam", "sam_ft"}
  assert result["summaries"]["simsam"]["nsd"] == summarize(per_image["simsam"]["nsd"])
  nsd = result["simsam_vs_sam"]["nsd"]
  assert nsd == result["comparisons"]["simsam"]["nsd"]
  assert nsd["wilcoxon"] == wilcoxon_signed_rank(per_image["simsam"]["nsd"],
                                                 per_image["sam"]["nsd"])
  assert nsd["bootstrap"] == paired_bootstrap_ci(per_image["simsam"]["nsd"],
                                                 per_image["sam"]["nsd"],
                                                 n_resamples=1000)
  assert nsd["significant"] and nsd["marker"] == "\u2021"
  assert nsd["wilcoxon"]["n_dropped_nan"] == 1
  assert nsd["bootstrap"]["low"] > 0
  identical = result["simsam_vs_sam"]["iou"]
  assert identical["wilcoxon"]["p_value"] == 1.0
  assert not identical["significant"] and identical["marker"] == ""


def test_compare_methods_other_baseline_keeps_simsam_vs_sam():
  per_image = _per_image()
  result = compare_methods(per_image, baseline="sam_ft", metrics=("nsd",),
                           n_resamples=200)
  assert set(result["comparisons"]) == {"sam", "simsam"}
  assert result["simsam_vs_sam"]["nsd"]["significant"]
  only_sam = compare_methods({"sam": per_image["sam"]}, n_resamples=10)
  assert only_sam["simsam_vs_sam"] is None and only_sam["comparisons"] == {}


def test_compare_methods_bad_input():
  per_image = _per_image()
  with pytest.raises(ValueError, match="baseline"):
    compare_methods(per_image, baseline="medsam")
  with pytest.raises(ValueError, match="hd95"):
    compare_methods(per_image, metrics=("dsc", "hd95"))
  per_image["simsam"]["dsc"] = per_image["simsam"]["dsc"][:-1]
  with pytest.raises(ValueError, match="differ in length"):
    compare_methods(per_image)
