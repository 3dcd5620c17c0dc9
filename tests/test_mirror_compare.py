"""`simsam_mirror.compare` / `assert_matches`: which differences count as near-ties.

Synthetic results on a 16 x 16 image with K = 20 (one differing click
keeps 95% of the labels), so every case is built by hand: a label flipped where the mirror's probability is within rounding of
0.5 is a near-tie, anywhere else it is a failure; a click swapped at the
top-K cut-off is a near-tie only when the two error values are that close.
"""

import types

import numpy as np
import pytest
import torch

import simsam_mirror as mirror

K = 20


def _case(flip_at=None, swap_to=None):
  """(ours, mirror's) results; the mirror clicks the K least certain pixels."""
  probs = np.full((16, 16), 0.9)
  probs[0, 0] = 0.5 + 3e-6  # error 0.499997
  probs.ravel()[16:16 + K - 1] = 0.5 - 1e-4 * np.arange(1, K)  # errors 0.4999 ... 0.4981
  probs[5, 5] = 0.4981 - 1e-7  # error 1e-7 below the K-th error (0.4981)
  probs[6, 6] = 0.49           # error 0.49: far below it
  err = 0.5 - np.abs(probs - 0.5)
  idx = np.argsort(-err.ravel(), kind="stable")[:K]
  xy = np.stack([idx % 16, idx // 16], 1)
  labels = (1 - (probs.ravel()[idx] > 0.5)).astype(np.int64)
  ours_xy, ours_labels = xy.copy(), labels.copy()
  if flip_at is not None:
    ours_labels[flip_at] = 1 - ours_labels[flip_at]
  if swap_to is not None:
    ours_xy[K - 1] = swap_to
  logits = np.linspace(-5, 5, K * 16).reshape(K, 4, 4)
  ref = {"clicks": torch.from_numpy(xy), "labels": torch.from_numpy(labels),
         "probs": torch.from_numpy(probs), "candidates": torch.from_numpy(logits),
         "first_logits": torch.zeros(4, 4, dtype=torch.float64),
         "scores": torch.tensor([0.5, 0.9] + [0.5] * (K - 2)), "chosen": 1,
         "mask": torch.from_numpy(probs > 0.5), "sam_mask": torch.from_numpy(probs > 0.5)}
  out = types.SimpleNamespace(clicks=ours_xy, labels=ours_labels, candidate_logits=logits,
                              first_low_res_logits=np.full((4, 4), 4e-5), chosen=1,
                              mask=probs > 0.5, sam_mask=probs > 0.5)
  return out, ref


def test_identical_results_match():
  d = mirror.compare(*_case(), K)
  assert d["same_clicks"] and d["label_flips"] == 0 and d["cutoff_gap"] == 0.0
  mirror.assert_matches(d, "same")


def test_label_flip_within_rounding_of_one_half_is_a_near_tie():
  # p = 0.5 + 3e-6 at the flipped click; first logits differ by 4e-5, so
  # p may move by 1e-5: a float-rounding tie of the label, not a cut-off.
  d = mirror.compare(*_case(flip_at=0), K)
  assert not d["same_clicks"] and d["label_flips"] == 1 and d["cutoff_gap"] == 0.0
  assert d["label_gap"] == pytest.approx(3e-6, rel=1e-6)
  mirror.assert_matches(d, "label tie", tie=1.0)


def test_label_flip_away_from_one_half_fails():
  d = mirror.compare(*_case(flip_at=K - 1), K)  # p = 0.4981: 1.9e-3 from 0.5
  assert d["label_flips"] == 1 and d["label_gap"] == pytest.approx(1.9e-3)
  with pytest.raises(AssertionError):
    mirror.assert_matches(d, "wrong label", tie=1.0)


def test_cutoff_swap_needs_close_errors():
  d = mirror.compare(*_case(swap_to=[5, 5]), K)  # error 1e-7 below the K-th
  assert d["label_flips"] == 0 and d["cutoff_gap"] == pytest.approx(1e-7, abs=1e-9)
  mirror.assert_matches(d, "cut-off tie", tie=1.0)
  d = mirror.compare(*_case(swap_to=[6, 6]), K)  # error 8.1e-3 below the K-th
  assert d["cutoff_gap"] == pytest.approx(8.1e-3)
  with pytest.raises(AssertionError):
    mirror.assert_matches(d, "wrong click", tie=1.0)
