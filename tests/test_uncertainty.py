"""Uncertainty that predicts failure (`simsam_jax.evaluation.uncertainty`).

Risk-coverage and AURC against a direct NumPy computation on known
orderings; the threshold and the review list; and the evaluation's report
stage on the small phantom dataset (validation run, then the test run that
takes its threshold from it).
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import scipy.stats

from simsam_jax import evaluate as ev
from simsam_jax.evaluation import uncertainty as unc
from simsam_jax.evaluation.config import get_eval_config


def direct_aurc(scores, risks):
  """Selective risk at each coverage by explicit sorting, averaged."""
  pairs = sorted(zip(scores, risks), key=lambda p: -p[0])
  curve = [np.mean([r for _, r in pairs[:k]]) for k in range(1, len(pairs) + 1)]
  return float(np.mean(curve)), curve


def test_known_orderings():
  risks = np.array([0.0, 0.5, 1.0])
  # Perfect ranking: selective risks 0, 0.25, 0.5.
  coverage, curve = unc.risk_coverage(np.array([0.9, 0.8, 0.1]), risks)
  np.testing.assert_allclose(coverage, [1 / 3, 2 / 3, 1])
  np.testing.assert_allclose(curve, [0.0, 0.25, 0.5])
  assert unc.aurc(np.array([0.9, 0.8, 0.1]), risks) == pytest.approx(0.25)
  assert unc.e_aurc(np.array([0.9, 0.8, 0.1]), risks) == pytest.approx(0.0)
  # Worst ranking: 1, 0.75, 0.5.
  assert unc.aurc(np.array([0.1, 0.8, 0.9]), risks) == pytest.approx(0.75)
  assert unc.e_aurc(np.array([0.1, 0.8, 0.9]), risks) == pytest.approx(0.5)


def test_against_direct_numpy_on_random_data():
  rng = np.random.default_rng(0)
  scores, risks = rng.random(37), rng.random(37)
  expected, curve = direct_aurc(scores, risks)
  assert unc.aurc(scores, risks) == pytest.approx(expected, abs=1e-12)
  np.testing.assert_allclose(unc.risk_coverage(scores, risks)[1], curve, atol=1e-12)
  oracle, _ = direct_aurc(-risks, risks)
  assert unc.e_aurc(scores, risks) == pytest.approx(expected - oracle, abs=1e-12)
  rho, p = unc.spearman(scores, 1 - risks)
  ref = scipy.stats.spearmanr(scores, 1 - risks)
  assert (rho, p) == pytest.approx((ref.statistic, ref.pvalue))
  assert math.isnan(unc.spearman(np.ones(5), rng.random(5))[0])  # constant score


def _rows(scores, dsc, method="simsam", column="confidence"):
  return [{"id": f"img_{i:02d}", "method": method, column: f"{s}", "dsc": f"{d}"}
          for i, (s, d) in enumerate(zip(scores, dsc))]


def test_threshold_and_review_list():
  scores = np.arange(10) / 10.0  # 0.0 .. 0.9
  assert unc.choose_threshold(scores, 0.9) == pytest.approx(0.1)  # keeps 9 of 10
  assert unc.choose_threshold(scores, 1.0) == pytest.approx(0.0)
  assert unc.choose_threshold(scores, 0.25) == pytest.approx(0.7)  # keeps 3 >= 2.5
  with pytest.raises(ValueError, match="review_keep"):
    unc.choose_threshold(scores, 0.0)
  rows = _rows([0.5, 0.2, 0.9, "nan"], [0.6, 0.1, 0.95, 0.5])
  review = unc.review_list(rows, threshold=0.3)
  assert [r["id"] for r in review] == ["img_01", "img_00", "img_02"]  # NaN left out
  assert [r["flagged"] for r in review] == [1, 0, 0]
  summary = unc.review_summary(review, 0.3, 0.9, "val")
  assert summary["kept"] == {"n": 2, "dsc_mean": pytest.approx(0.775)}
  assert summary["flagged"] == {"n": 1, "dsc_mean": pytest.approx(0.1)}


def test_score_report_uses_each_methods_column():
  rows = (_rows([0.9, 0.5, 0.1], [0.9, 0.6, 0.2])
          + _rows([0.2, 0.9, 0.5], [0.9, 0.6, 0.2], method="sam", column="iou_prediction"))
  report = unc.score_report(rows)
  assert set(report) == {"simsam_confidence", "sam_iou_prediction"}
  assert report["simsam_confidence"]["e_aurc"] == pytest.approx(0.0)
  assert report["simsam_confidence"]["spearman_rho"] == pytest.approx(1.0)
  assert report["sam_iou_prediction"]["e_aurc"] > 0


# ----------------------------------------------------------------------------
# The evaluation's report stage.
# ----------------------------------------------------------------------------


def _config(tmp_path, split, **overrides):
  config = get_eval_config("phantom")
  config.builder_config = "small"
  config.data_dir = str(tmp_path / "tfds")
  config.checkpoint = "random:tiny"
  config.methods = "sam,simsam"
  config.k = 3
  config.num_figures = 1
  config.split = split
  for k, v in overrides.items():
    setattr(config, k, v)
  return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("unc")
  val = ev.evaluate(_config(tmp, "validation"), str(tmp / "val"), progress=False)
  test_config = _config(tmp, "test", review_workdir=str(tmp / "val"), review_keep=0.5)
  test = ev.evaluate(test_config, str(tmp / "test"), progress=False)
  return tmp, val, test


def test_evaluation_reports_uncertainty(runs):
  tmp, val, test = runs
  scores = test["uncertainty"]["scores"]
  assert set(scores) == set(unc.SCORES)
  with open(tmp / "test" / "per_image.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  for r in rows:  # the new columns: SAM's IoU head, the chosen candidate's score
    assert math.isfinite(float(r["iou_prediction"]))
    assert math.isfinite(float(r["chosen_score"])) == (r["method"] == "simsam")
  # results.json's numbers are those of the pure functions on the CSV rows.
  ids, s, dsc = unc.score_values(rows, "simsam_confidence")
  assert len(ids) == 4
  assert scores["simsam_confidence"]["aurc"] == pytest.approx(direct_aurc(s, 1 - dsc)[0])
  # The threshold comes from the validation run's confidences.
  with open(tmp / "val" / "per_image.csv", newline="") as f:
    _, val_scores, _ = unc.score_values(list(csv.DictReader(f)), "simsam_confidence")
  review = test["uncertainty"]["review"]
  assert review["threshold"] == pytest.approx(unc.choose_threshold(val_scores, 0.5))
  assert review["kept"]["n"] + review["flagged"]["n"] == 4
  with open(tmp / "test" / "review.csv", newline="") as f:
    listed = list(csv.DictReader(f))
  assert [r["id"] for r in listed] == [ids[i] for i in np.argsort(s, kind="stable")]
  assert sum(int(r["flagged"]) for r in listed) == review["flagged"]["n"]
  table = (tmp / "test" / "table.md").read_text()
  assert "AURC" in table and "simsam_confidence" in table and "flagged" in table
  assert (tmp / "test" / "risk_coverage.png").is_file()
  saved = json.loads((tmp / "test" / "results.json").read_text())
  assert saved["uncertainty"]["review"]["threshold_from"] == str(tmp / "val")
  # The evaluation figure shows the agreement map (a sixth, wider panel).
  from PIL import Image
  figure = next((tmp / "test" / "figures").glob("*.png"))
  assert Image.open(figure).width > 5 * 256


def test_bad_review_workdir(runs, tmp_path):
  tmp, _, _ = runs
  with pytest.raises(ev.EvaluationError, match="review_workdir"):
    ev.evaluate(_config(tmp, "test", review_workdir=str(tmp_path / "none")),
                str(tmp_path / "w"), progress=False)
  with pytest.raises(ev.EvaluationError, match="same split"):
    ev.evaluate(_config(tmp, "validation", review_workdir=str(tmp / "val")),
                str(tmp_path / "w2"), progress=False)
  assert not (tmp_path / "w").exists() and not (tmp_path / "w2").exists()
