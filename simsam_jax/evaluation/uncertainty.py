"""Uncertainty that predicts failure: risk-coverage, AURC, E-AURC, review list.

Pure functions on the per-image rows of `per_image.csv` (dicts of strings,
as `simsam_jax.evaluate` writes them), plus `report`, which the evaluation's
report stage calls to write `review.csv` and `risk_coverage.png`.

Scores (`SCORES`), each judged on the DSC of the method it belongs to:

* `simsam_confidence`: SimSAM's mean pairwise IoU of its K candidates
  (column `confidence` of the simsam rows);
* `simsam_chosen_mean_iou`: the chosen candidate's mean IoU to all K (its
  aggregation score; column `chosen_score` of the simsam rows);
* `sam_iou_prediction`: SAM's IoU head for its box-only mask (column
  `iou_prediction` of the sam rows).

Definitions (Geifman, Uziel, El-Yaniv, "Bias-Reduced Uncertainty Estimation
for Deep Neural Classifiers", ICLR 2019): the risk of an image is 1 - DSC.
Images are ranked by descending score; keeping the k most confident gives
coverage k / n and selective risk = mean risk of those k. AURC is the mean
of the selective risk over k = 1..n; E-AURC = AURC - AURC of the oracle
ordering (ascending risk), so 0 is a perfect ranking. Ties of the score are
broken by row order (a stable sort), so identical scores give a defined,
though arbitrary, ranking. Spearman's rho between score and DSC comes from
`scipy.stats.spearmanr`. Images whose score or DSC is NaN are left out.

Review list (`config.review_workdir`): the test images ranked by SimSAM's
confidence, least confident first. The threshold is chosen on another
split's rows (a finished evaluation of the same configuration on the
validation split) as the largest score that keeps at least
`config.review_keep` of those images (`choose_threshold`); test images
below it are flagged for review, and the DSC of kept and flagged images is
reported.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Optional, Sequence

import numpy as np
import scipy.stats

from simsam_jax.evaluation import plots

# score name -> (method whose rows carry it, CSV column).
SCORES = {"simsam_confidence": ("simsam", "confidence"),
          "simsam_chosen_mean_iou": ("simsam", "chosen_score"),
          "sam_iou_prediction": ("sam", "iou_prediction")}
REVIEW_SCORE = "simsam_confidence"
REVIEW_FIELDS = ("rank", "id", "score", "dsc", "flagged")


def _float(text) -> float:
  try:
    return float(text)
  except (TypeError, ValueError):
    return math.nan


def score_values(rows: Sequence[dict], score: str, ids: Optional[Sequence[str]] = None):
  """(ids, scores (n,) float64, dsc (n,) float64) of one score, finite only.

  Args:
    rows: per-image CSV rows.
    score: a `SCORES` name.
    ids: restrict to these image ids (default: all), in this order.
  """
  method, column = SCORES[score]
  by_id = {r["id"]: r for r in rows if r.get("method") == method}
  order = sorted(by_id) if ids is None else [i for i in ids if i in by_id]
  out_ids, s, d = [], [], []
  for i in order:
    value, dsc = _float(by_id[i].get(column)), _float(by_id[i].get("dsc"))
    if math.isfinite(value) and math.isfinite(dsc):
      out_ids.append(i)
      s.append(value)
      d.append(dsc)
  return out_ids, np.asarray(s, np.float64), np.asarray(d, np.float64)


def risk_coverage(scores: np.ndarray, risks: np.ndarray):
  """(coverage (n,), selective risk (n,)) keeping the k most confident.

  Args:
    scores: (n,) higher = more confident; risks: (n,) e.g. 1 - DSC.
  """
  scores, risks = np.asarray(scores, np.float64), np.asarray(risks, np.float64)
  n = scores.size
  order = np.argsort(-scores, kind="stable")
  k = np.arange(1, n + 1)
  return k / n, np.cumsum(risks[order]) / k


def aurc(scores: np.ndarray, risks: np.ndarray) -> float:
  """Area under the risk-coverage curve (mean selective risk); NaN if n = 0."""
  if np.size(scores) == 0:
    return math.nan
  return float(np.mean(risk_coverage(scores, risks)[1]))


def e_aurc(scores: np.ndarray, risks: np.ndarray) -> float:
  """AURC minus the AURC of the oracle ordering (ascending risk)."""
  return aurc(scores, risks) - aurc(-np.asarray(risks, np.float64), risks)


def spearman(scores: np.ndarray, dsc: np.ndarray) -> tuple[float, float]:
  """(rho, two-sided p) of score vs DSC; NaN when undefined (n < 3, constant)."""
  if np.size(scores) < 3 or np.ptp(scores) == 0 or np.ptp(dsc) == 0:
    return math.nan, math.nan
  result = scipy.stats.spearmanr(scores, dsc)
  return float(result.statistic), float(result.pvalue)


def score_report(rows: Sequence[dict], ids: Optional[Sequence[str]] = None) -> dict:
  """{score: {n, aurc, e_aurc, oracle_aurc, mean_risk, spearman_rho,
  spearman_p}} for every score present in the rows (n >= 1)."""
  out = {}
  for score in SCORES:
    _, s, dsc = score_values(rows, score, ids)
    if s.size == 0:
      continue
    risk = 1.0 - dsc
    rho, p = spearman(s, dsc)
    out[score] = {"method": SCORES[score][0], "n": int(s.size), "aurc": aurc(s, risk),
                  "e_aurc": e_aurc(s, risk), "oracle_aurc": aurc(-risk, risk),
                  "mean_risk": float(risk.mean()), "spearman_rho": rho, "spearman_p": p}
  return out


def choose_threshold(scores: np.ndarray, keep: float) -> float:
  """The largest t with mean(scores >= t) >= keep (scores: validation split).

  Raises:
    ValueError: keep not in (0, 1], or no finite score.
  """
  if not 0.0 < keep <= 1.0:
    raise ValueError(f"review_keep={keep!r} must be in (0, 1]")
  s = np.sort(np.asarray(scores, np.float64)[np.isfinite(scores)])[::-1]
  if s.size == 0:
    raise ValueError("no finite score to choose a threshold from")
  return float(s[math.ceil(keep * s.size) - 1])


def review_list(rows: Sequence[dict], threshold: Optional[float],
                ids: Optional[Sequence[str]] = None, score: str = REVIEW_SCORE) -> list:
  """Rows of review.csv: least confident first; flagged = score < threshold."""
  out_ids, s, dsc = score_values(rows, score, ids)
  order = np.argsort(s, kind="stable")
  return [{"rank": rank + 1, "id": out_ids[i], "score": float(s[i]), "dsc": float(dsc[i]),
           "flagged": "" if threshold is None else int(s[i] < threshold)}
          for rank, i in enumerate(order)]


def review_summary(review: Sequence[dict], threshold: Optional[float], keep: float,
                   source: Optional[str]) -> dict:
  """Counts and mean DSC of kept vs flagged images."""
  out = {"score": REVIEW_SCORE, "threshold": threshold, "keep_target": keep,
         "threshold_from": source, "num_images": len(review)}
  if threshold is None:
    return out
  for name, flag in (("kept", 0), ("flagged", 1)):
    d = [r["dsc"] for r in review if r["flagged"] == flag]
    out[name] = {"n": len(d), "dsc_mean": float(np.mean(d)) if d else math.nan}
  return out


def render_markdown(scores: dict, review: dict) -> str:
  """The table.md section: one row per score, then the review split."""
  lines = ["", "## Uncertainty: does the score predict failure (risk = 1 - DSC)?", "",
           "| Score | n | AURC ↓ | E-AURC ↓ | Spearman ρ (score, DSC) ↑ |", "|---|---|---|---|---|"]
  for name, r in scores.items():
    rho = "n/a" if not math.isfinite(r["spearman_rho"]) else (
        f"{r['spearman_rho']:.3f} (p = {r['spearman_p']:.2g})")
    lines.append(f"| {name} | {r['n']} | {r['aurc']:.4f} | {r['e_aurc']:.4f} | {rho} |")
  lines += ["", "AURC: mean selective risk over coverages 1/n..1 (ranked by the score); "
            "E-AURC: AURC minus the oracle ranking's."]
  if review.get("threshold") is not None:
    kept, flagged = review["kept"], review["flagged"]
    lines += ["", f"Review list (review.csv): threshold {review['threshold']:.4f} on "
              f"{review['score']}, chosen on {review['threshold_from']} to keep "
              f"{100 * review['keep_target']:.0f}% of its images: "
              f"kept {kept['n']} (DSC {100 * kept['dsc_mean']:.1f}%), "
              f"flagged {flagged['n']} (DSC {100 * flagged['dsc_mean']:.1f}%)."]
  elif review.get("num_images"):
    lines += ["", "Review list (review.csv): ranked by SimSAM's confidence; no threshold "
              "(set --config.review_workdir to a validation-split evaluation)."]
  return "\n".join(lines) + "\n"


def figure(rows: Sequence[dict], ids: Optional[Sequence[str]] = None):
  """Risk-coverage curves of every score (and each one's oracle), or None."""
  series = []
  for score in SCORES:
    _, s, dsc = score_values(rows, score, ids)
    if s.size:
      series.append((score, *risk_coverage(s, 1.0 - dsc)))
      series.append((f"oracle ({SCORES[score][0]})", *risk_coverage(dsc, 1.0 - dsc)))
  if not series:
    return None
  unique = {label: (label, xs, ys) for label, xs, ys in series}
  top = max(float(np.max(ys)) for _, _, ys in unique.values())
  return plots.line_chart(list(unique.values()), "Risk-coverage (risk = 1 - DSC)",
                          "coverage", "selective risk", xlim=(0.0, 1.0),
                          ylim=(0.0, max(top, 1e-3) * 1.05))


def check_review_workdir(path: str, config: dict) -> None:
  """ValueError naming `--config.review_workdir` unless it holds a finished
  evaluation of the same dataset, checkpoint, protocol and K."""
  if not path:
    return
  flag = f"--config.review_workdir={path}"
  for name in ("per_image.csv", "results.json", "config.json"):
    if not os.path.isfile(os.path.join(path, name)):
      raise ValueError(f"{flag}: no {name} (run the evaluation on the validation split "
                       "into that folder first)")
  with open(os.path.join(path, "config.json")) as f:
    other = json.load(f)
  diff = [k for k in ("dataset", "builder_config", "checkpoint", "protocol", "k")
          if other.get(k) != config.get(k)]
  if diff:
    raise ValueError(f"{flag} was evaluated with another {', '.join(diff)}")
  if other.get("split") == config.get("split"):
    raise ValueError(f"{flag} holds the same split ({other.get('split')!r}); the "
                     "threshold must come from another split (validation)")


def report(workdir: str, rows: Sequence[dict], ids: Sequence[str], config: dict,
           review_rows: Optional[Sequence[dict]] = None) -> tuple[dict, str]:
  """The evaluation's uncertainty outputs.

  Writes `review.csv` and `risk_coverage.png` into `workdir`;
  returns (the `uncertainty` entry of results.json, the table.md section).

  Args:
    rows: the merged per-image rows; ids: the evaluated image ids.
    config: the run's config as a dict (`review_workdir`, `review_keep`).
    review_rows: the per-image rows of `config["review_workdir"]`, or None.
  """
  from simsam_jax.workdir import write_atomic
  scores = score_report(rows, ids)
  keep = float(config.get("review_keep") or 0.9)
  threshold = None
  if review_rows:
    _, val_scores, _ = score_values(review_rows, REVIEW_SCORE)
    if val_scores.size:
      threshold = choose_threshold(val_scores, keep)
  review = review_list(rows, threshold, ids)
  summary = review_summary(review, threshold, keep,
                           config.get("review_workdir") if threshold is not None else None)
  if review:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=REVIEW_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({**r, "score": f"{r['score']:.6f}", "dsc": f"{r['dsc']:.6f}"}
                     for r in review)
    write_atomic(os.path.join(workdir, "review.csv"), buffer.getvalue())
  chart = figure(rows, ids)
  if chart is not None:
    buffer = io.BytesIO()
    chart.save(buffer, format="PNG")
    write_atomic(os.path.join(workdir, "risk_coverage.png"), buffer.getvalue())
  curves = {}
  for score in scores:
    _, s, dsc = score_values(rows, score, ids)
    coverage, risk = risk_coverage(s, 1.0 - dsc)
    curves[score] = {"coverage": coverage.tolist(), "risk": risk.tolist()}
  return ({"scores": scores, "review": summary, "curves": curves},
          render_markdown(scores, summary) if scores else "")
