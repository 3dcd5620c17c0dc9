"""`simsam_mirror.compare` / `assert_matches`: which differences count as near-ties.

Synthetic results on a 32 x 32 image with K = 20 (one differing click keeps
95% of the labels), built by hand from box-only logits on the image's own
grid (the mirror's resampling is replaced by a plain sigmoid here):

* a label flipped where the mirror's probability is within rounding of 0.5
  is a near-tie, anywhere else a failure;
* a click swapped at the top-K cut-off is a near-tie only when the two error
  values are that close;
* box-only logits that differ by more than the tolerance fail outright;
* candidates are compared unless a near-tie of p changed the mask prompt of
  the K decodes (the binary mask at the paper's size, its low-res placement
  at native size).
"""

import types

import numpy as np
import pytest
import torch

import simsam_mirror as mirror

K = 20
N = 32


@pytest.fixture(autouse=True)
def plain_sigmoid(monkeypatch):
  """Box-only logits on the image grid: p = sigmoid(logit), no resampling."""
  monkeypatch.setattr(mirror, "probabilities", lambda low, *sizes: torch.sigmoid(low))


def _case(flip_at=None, swap_to=None, first_flip=None, scramble=False, prompt_size=None):
  """(ours, mirror's) results; the mirror clicks the K least certain pixels.

  flip_at: a click whose label we flip; swap_to: (x, y) replacing our last
  click; first_flip: (y, x) where our box-only logit has the other sign;
  scramble: our candidate logits 3 away from the mirror's; prompt_size: a
  native-size mirror whose mask prompt is the binary mask placed in a
  prompt_size grid.
  """
  probs = np.full((N, N), 0.9)
  probs[0, 0] = 0.5 + 3e-6  # error 0.499997
  probs.ravel()[N:N + K - 1] = 0.5 - 1e-4 * np.arange(1, K)  # errors 0.4999 ... 0.4981
  probs[5, 5] = 0.4981 - 1e-7  # error 1e-7 below the K-th error (0.4981)
  probs[6, 6] = 0.49           # error 0.49: far below it
  logits = np.log(probs / (1 - probs))
  err = 0.5 - np.abs(probs - 0.5)
  idx = np.argsort(-err.ravel(), kind="stable")[:K]
  xy = np.stack([idx % N, idx // N], 1)
  labels = (1 - (probs.ravel()[idx] > 0.5)).astype(np.int64)
  ours_xy, ours_labels, our_logits = xy.copy(), labels.copy(), logits.astype(np.float32)
  if flip_at is not None:
    ours_labels[flip_at] = 1 - ours_labels[flip_at]
  if swap_to is not None:
    ours_xy[K - 1] = swap_to
  if first_flip is not None:
    our_logits[first_flip] = -our_logits[first_flip]
  candidates = np.linspace(-5, 5, K * 16).reshape(K, 4, 4)
  ref = {"clicks": torch.from_numpy(xy), "labels": torch.from_numpy(labels),
         "probs": torch.from_numpy(probs), "candidates": torch.from_numpy(candidates),
         "first_logits": torch.from_numpy(logits), "reshaped_size": (1024, 1024),
         "original_size": (N, N), "scores": torch.tensor([0.5, 0.9] + [0.5] * (K - 2)),
         "chosen": 1, "mask": torch.from_numpy(probs > 0.5),
         "sam_mask": torch.from_numpy(probs > 0.5)}
  if prompt_size is not None:  # the N x N image fills the model frame
    ref["mask_prompt"] = mirror.binary_in_low_res_frame(torch.from_numpy(probs > 0.5),
                                                        (1024, 1024), prompt_size)
  out = types.SimpleNamespace(clicks=ours_xy, labels=ours_labels,
                              candidate_logits=candidates + 3.0 * scramble,
                              first_low_res_logits=our_logits, chosen=1,
                              mask=probs > 0.5, sam_mask=our_logits > 0)
  return out, ref


def test_identical_results_match():
  d = mirror.compare(*_case(), K)
  assert d["same_clicks"] and d["label_flips"] == 0 and d["cutoff_gap"] == 0.0
  assert d["first_mask_flips"] == d["mask_prompt_cells"] == 0
  mirror.assert_matches(d, "same")


def test_label_flip_within_rounding_of_one_half_is_a_near_tie():
  # p = 0.5 + 3e-6 at the flipped click, within the 1e-5 floor of the bound.
  d = mirror.compare(*_case(flip_at=0), K)
  assert not d["same_clicks"] and d["label_flips"] == 1 and d["cutoff_gap"] == 0.0
  assert d["label_gap"] == pytest.approx(3e-6, rel=1e-6)
  mirror.assert_matches(d, "label tie")


def test_label_flip_away_from_one_half_fails():
  d = mirror.compare(*_case(flip_at=K - 1), K)  # p = 0.4981: 1.9e-3 from 0.5
  assert d["label_flips"] == 1 and d["label_gap"] == pytest.approx(1.9e-3)
  with pytest.raises(AssertionError):
    mirror.assert_matches(d, "wrong label")


def test_cutoff_swap_needs_close_errors():
  d = mirror.compare(*_case(swap_to=[5, 5]), K)  # error 1e-7 below the K-th
  assert d["label_flips"] == 0 and d["cutoff_gap"] == pytest.approx(1e-7, abs=1e-9)
  mirror.assert_matches(d, "cut-off tie")
  d = mirror.compare(*_case(swap_to=[6, 6]), K)  # error 8.1e-3 below the K-th
  assert d["cutoff_gap"] == pytest.approx(8.1e-3)
  with pytest.raises(AssertionError):
    mirror.assert_matches(d, "wrong click")


def test_mask_prompt_changed_by_a_near_tie_is_not_compared():
  # Our box-only logit has the other sign where p = 0.5 + 3e-6 (logits 2.4e-5
  # apart): in the paper's flow that pixel is a cell of the mask prompt, so
  # the candidates (here 3 apart) are decoded from different prompts.
  d = mirror.compare(*_case(first_flip=(0, 0), scramble=True), K)
  assert d["first_mask_flips"] == 1 and d["mask_prompt_cells"] == 1
  assert d["first_mask_gap"] == pytest.approx(3e-6, rel=1e-3)
  assert d["relative_logit_delta"] == pytest.approx(3.0 / 5.0)
  mirror.assert_matches(d, "prompt tie")


def test_box_only_logits_beyond_the_tolerance_fail():
  # The same sign flip where p = 0.9: logits 4.4 apart, far beyond 1e-3 of
  # their scale, whatever follows from them.
  d = mirror.compare(*_case(first_flip=(31, 31)), K)
  assert d["first_mask_flips"] == 1 and d["first_mask_gap"] == pytest.approx(0.4)
  assert d["first_logit_delta"] == pytest.approx(2 * np.log(9), rel=1e-6)
  with pytest.raises(AssertionError):
    mirror.assert_matches(d, "wrong first mask")


def test_native_prompt_cells_come_from_the_low_res_placement():
  # A 4 x 4 prompt samples pixels 4, 12, 20, 28 of each axis (nearest-exact):
  # the flipped pixel (0, 0) is not among them, so the prompts agree and the
  # scrambled candidates must fail; a 32 x 32 prompt samples every pixel.
  d = mirror.compare(*_case(first_flip=(0, 0), scramble=True, prompt_size=4), K)
  assert d["first_mask_flips"] == 1 and d["mask_prompt_cells"] == 0
  with pytest.raises(AssertionError):
    mirror.assert_matches(d, "prompt equal, candidates not")
  mirror.assert_matches(mirror.compare(*_case(first_flip=(0, 0), prompt_size=4), K), "equal")
  d = mirror.compare(*_case(first_flip=(0, 0), scramble=True, prompt_size=N), K)
  assert d["mask_prompt_cells"] == 1
  mirror.assert_matches(d, "prompt tie")
