"""Summaries and paired significance tests over per-image metric values.

The paper reports mean +- standard deviation over the test images (in
percent) and marks with a double dagger the SimSAM results that differ from
SAM by a Wilcoxon signed-rank test at p < 0.01. This module gives:

* `summarize`: mean and POPULATION std (ddof=0, numpy's default; the paper's
  "mean +- std" is the population std, SPEC section 2), nan-aware: images
  whose metric is NaN (both masks empty under the published
  `EmptyMaskPolicy`) are left out and counted in `n_nan`.
* `wilcoxon_signed_rank`: `scipy.stats.wilcoxon(a, b)` on the paired values,
  two-sided, scipy's defaults otherwise.
* `paired_bootstrap_ci`: a percentile bootstrap confidence interval of the
  mean paired difference, resampling images with replacement (vectorised
  numpy, deterministic given the seed).
* `compare_methods`: both tests for every method against a baseline, plus
  an explicitly keyed `simsam_vs_sam` entry.

Conventions: inputs are 1-D sequences of per-image values in the same image
order for every method; differences are always `a - b` (method minus
baseline), so a positive difference means `a` scores higher. A pair is
dropped when either value is NaN, and the number dropped is reported.
Outputs are dicts of plain Python values (floats, ints, str, bool, None),
ready for `json.dump`.

Choices, with their reasons:

* Wilcoxon zero handling: `zero_method="wilcox"`, scipy's default. Images
  on which both methods score exactly the same (common: SimSAM often returns
  SAM's mask) carry no signed information and are dropped before ranking, as
  in Wilcoxon's original test. The paper does not say which zero handling
  it used; scipy's default is the likeliest, and `"pratt"` / `"zsplit"` are
  available as an argument. `method="auto"` (scipy's default) is used as
  well: in the scipy installed here (1.17) that means, for n pairs counted
  before zeros are dropped, the exact null distribution when n <= 50 and
  there are no ties or zeros, an exact permutation enumeration when n <= 13
  otherwise, and the normal approximation with continuity correction in all
  other cases. Other scipy versions may choose differently, so p-values near
  a threshold may differ from the paper's scipy.
* All differences zero (identical per-image values, e.g. a method compared
  with itself): scipy's statistic is undefined there (0/0 in the normal
  approximation, NaN p-value or an error depending on the version). We return
  statistic 0.0 and p = 1.0 (no evidence of any difference) with a `note`.
* No pairs left (empty input, or all pairs NaN): statistic and p are NaN with
  a `note`, and the bootstrap returns NaN bounds; nothing raises, so one
  degenerate metric does not abort a whole evaluation.
* The bootstrap interval is the plain percentile interval (not BCa): simple,
  transparent and adequate for a mean difference over tens to hundreds of
  images. `scipy.stats.bootstrap` is not used because its default (BCa) and
  its resampling stream differ, which would make our seeds meaningless across
  scipy versions.
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Sequence, Tuple

import numpy as np
import scipy
import scipy.stats

# Significance level of the paper's double-dagger marker.
PAPER_ALPHA = 0.01
SIGNIFICANCE_MARKER = "\u2021"  # double dagger

# Largest number of resampled indices held in memory at once by the bootstrap.
_MAX_BOOTSTRAP_ELEMENTS = 1 << 22


def _as_1d(values, name: str) -> np.ndarray:
  """Returns `values` as a 1-D float64 numpy array."""
  array = np.asarray(values, dtype=np.float64)
  if array.ndim != 1:
    raise ValueError(f"{name} must be 1-D (one value per image), got shape "
                     f"{array.shape}")
  return array


def _paired(a, b) -> Tuple[np.ndarray, np.ndarray, int]:
  """Drops pairs with a NaN on either side.

  Args:
    a: (N,) per-image values of one method.
    b: (N,) per-image values of the other method, same image order.

  Returns:
    (a_kept, b_kept, n_dropped): float64 arrays of the pairs without NaN, and
    how many pairs were dropped.

  Raises:
    ValueError: if `a` or `b` is not 1-D or their lengths differ.
  """
  a = _as_1d(a, "a")
  b = _as_1d(b, "b")
  if a.shape != b.shape:
    raise ValueError(f"paired values must have the same length, got a "
                     f"{a.shape} and b {b.shape}")
  keep = ~(np.isnan(a) | np.isnan(b))
  return a[keep], b[keep], int(keep.size - np.count_nonzero(keep))


def summarize(values) -> Dict[str, float]:
  """Mean and population standard deviation, ignoring NaN.

  Args:
    values: (N,) per-image values (any real dtype), NaN for images where the
      metric is undefined.

  Returns:
    {"mean": float, "std": float (ddof=0), "n": int (values used),
    "n_nan": int (values ignored)}. Mean and std are NaN when no value is
    left. Units are the input's (fractions; percent is the caller's
    business).
  """
  values = _as_1d(values, "values")
  finite = values[~np.isnan(values)]
  n = int(finite.size)
  if n == 0:
    mean = std = math.nan
  else:
    mean = float(np.mean(finite))
    std = float(np.std(finite, ddof=0))
  return {"mean": mean, "std": std, "n": n, "n_nan": int(values.size - n)}


def wilcoxon_signed_rank(a, b, zero_method: str = "wilcox") -> Dict[str, object]:
  """Two-sided Wilcoxon signed-rank test of paired values, `a - b`.

  Args:
    a: (N,) per-image values of one method (e.g. SimSAM's NSD).
    b: (N,) per-image values of the other (e.g. SAM's NSD), same image order.
    zero_method: scipy's zero handling; `"wilcox"` (default, scipy's default:
      drop zero differences), `"pratt"` or `"zsplit"`.

  Returns:
    {"statistic": float (scipy's two-sided statistic, min(R+, R-)),
     "p_value": float, "n": int (pairs used), "n_nonzero_differences": int,
     "n_dropped_nan": int, "zero_method": str, "alternative": "two-sided",
     "method": "auto", "scipy_version": str, "note": str or None}.

  Raises:
    ValueError: if `a` or `b` is not 1-D or their lengths differ.
  """
  a, b, n_dropped = _paired(a, b)
  differences = a - b
  n = int(differences.size)
  n_nonzero = int(np.count_nonzero(differences))
  result = {
      "statistic": math.nan,
      "p_value": math.nan,
      "n": n,
      "n_nonzero_differences": n_nonzero,
      "n_dropped_nan": n_dropped,
      "zero_method": zero_method,
      "alternative": "two-sided",
      "method": "auto",
      "scipy_version": scipy.__version__,
      "note": None,
  }
  if n == 0:
    result["note"] = "no pairs without NaN; the test is undefined"
    return result
  if n_nonzero == 0:
    result.update(statistic=0.0, p_value=1.0,
                  note=("all paired differences are zero; scipy's test is "
                        "undefined, reported as p = 1 (no evidence of a "
                        "difference)"))
    return result
  test = scipy.stats.wilcoxon(a, b, zero_method=zero_method,
                              alternative="two-sided")
  result.update(statistic=float(test.statistic), p_value=float(test.pvalue))
  return result


def paired_bootstrap_ci(a, b, n_resamples: int = 10000,
                        confidence: float = 0.95,
                        seed: int = 0) -> Dict[str, object]:
  """Percentile bootstrap confidence interval of the mean of `a - b`.

  Images (pairs) are resampled with replacement, `n_resamples` times, from a
  `np.random.default_rng(seed)` stream; the same inputs and seed give the same
  interval.

  Args:
    a: (N,) per-image values of one method.
    b: (N,) per-image values of the other, same image order.
    n_resamples: number of bootstrap resamples, >= 1.
    confidence: two-sided confidence level in (0, 1).
    seed: seed of the resampling generator.

  Returns:
    {"mean_difference": float (mean of a - b over the kept pairs),
     "low": float, "high": float (the interval bounds), "n": int,
     "n_dropped_nan": int, "confidence": float, "n_resamples": int,
     "seed": int, "method": "percentile"}. All three values are NaN when no
     pair is left.

  Raises:
    ValueError: on mismatched or non-1-D inputs, n_resamples < 1 or a
      confidence outside (0, 1).
  """
  n_resamples = int(n_resamples)
  confidence = float(confidence)
  if n_resamples < 1:
    raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}")
  a, b, n_dropped = _paired(a, b)
  differences = a - b
  n = int(differences.size)
  result = {
      "mean_difference": math.nan,
      "low": math.nan,
      "high": math.nan,
      "n": n,
      "n_dropped_nan": n_dropped,
      "confidence": confidence,
      "n_resamples": n_resamples,
      "seed": int(seed),
      "method": "percentile",
  }
  if n == 0:
    return result
  rng = np.random.default_rng(seed)
  chunk = max(1, min(n_resamples, _MAX_BOOTSTRAP_ELEMENTS // n))
  means = np.empty(n_resamples, dtype=np.float64)
  for start in range(0, n_resamples, chunk):
    stop = min(start + chunk, n_resamples)
    indices = rng.integers(0, n, size=(stop - start, n))
    means[start:stop] = differences[indices].mean(axis=1)
  tail = 100.0 * (1.0 - confidence) / 2.0
  low, high = np.percentile(means, [tail, 100.0 - tail])
  result.update(mean_difference=float(differences.mean()), low=float(low),
                high=float(high))
  return result


def _compare(a, b, alpha: float, n_resamples: int, confidence: float,
             seed: int) -> Dict[str, object]:
  """Wilcoxon test and bootstrap interval of one paired comparison."""
  test = wilcoxon_signed_rank(a, b)
  significant = bool(not math.isnan(test["p_value"]) and test["p_value"] < alpha)
  return {
      "wilcoxon": test,
      "bootstrap": paired_bootstrap_ci(a, b, n_resamples=n_resamples,
                                       confidence=confidence, seed=seed),
      "significant": significant,
      "marker": SIGNIFICANCE_MARKER if significant else "",
  }


def compare_methods(per_image: Mapping[str, Mapping[str, Sequence[float]]],
                    baseline: str = "sam",
                    metrics: Sequence[str] = ("dsc", "nsd", "iou"),
                    alpha: float = PAPER_ALPHA,
                    n_resamples: int = 10000,
                    confidence: float = 0.95,
                    seed: int = 0) -> Dict[str, object]:
  """Summaries, and paired tests of every method against a baseline.

  Args:
    per_image: {method: {metric: (N,) per-image values}}, the same N images in
      the same order for every method and metric (NaN where undefined).
    baseline: the method every other one is compared with (default "sam").
    metrics: the metrics to summarise and compare; each must be present for
      every method.
    alpha: significance level of the marker (paper: p < 0.01).
    n_resamples, confidence, seed: passed to `paired_bootstrap_ci` (the same
      seed for every comparison).

  Returns:
    {"baseline": str, "metrics": [str], "alpha": float,
     "summaries": {method: {metric: summarize(...)}},
     "comparisons": {method: {metric: {"wilcoxon": ..., "bootstrap": ...,
                                       "significant": bool, "marker": str}}}
       for every method other than the baseline (differences are method -
       baseline),
     "simsam_vs_sam": {metric: {...same...}} when both "simsam" and "sam" are
       in `per_image` (whatever the baseline), else None}.

  Raises:
    ValueError: if the baseline or a metric is missing, or if the per-image
      arrays of one metric differ in length between methods.
  """
  metrics = tuple(metrics)
  if baseline not in per_image:
    raise ValueError(f"baseline {baseline!r} is not among the methods "
                     f"{sorted(per_image)}")
  lengths = {}
  for method, values in per_image.items():
    for metric in metrics:
      if metric not in values:
        raise ValueError(f"method {method!r} has no metric {metric!r} (it has "
                         f"{sorted(values)})")
      length = _as_1d(values[metric], f"{method}/{metric}").size
      lengths.setdefault(metric, {})[method] = length
  for metric, by_method in lengths.items():
    if len(set(by_method.values())) > 1:
      raise ValueError(f"per-image arrays of {metric!r} differ in length "
                       f"between methods: {by_method}")

  def compare_pair(method: str, reference: str) -> Dict[str, object]:
    return {metric: _compare(per_image[method][metric],
                             per_image[reference][metric], alpha, n_resamples,
                             confidence, seed)
            for metric in metrics}

  return {
      "baseline": baseline,
      "metrics": list(metrics),
      "alpha": float(alpha),
      "summaries": {method: {metric: summarize(values[metric])
                             for metric in metrics}
                    for method, values in per_image.items()},
      "comparisons": {method: compare_pair(method, baseline)
                      for method in per_image if method != baseline},
      "simsam_vs_sam": (compare_pair("simsam", "sam")
                        if "simsam" in per_image and "sam" in per_image
                        else None),
  }
