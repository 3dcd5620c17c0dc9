"""`python -m simsam_jax.interactive` on the small phantom dataset.

A random `tiny` SAM, 3 rounds, the 4 test phantoms (256 x 256 by the paper
protocol): what it writes, NoC / mIoU recomputed from clicks.csv by code
written here equal noc.json, resume, refusal of another config, bad input.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from simsam_jax import evaluate as ev
from simsam_jax import interactive

REPO = pathlib.Path(__file__).resolve().parents[1]
ROUNDS = 3
STARTS = ["box", "simsam", "clicks_only"]


def _config(data_dir, **overrides):
  spec = importlib.util.spec_from_file_location("icfg", REPO / "configs" / "interactive.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("phantom,runlocal")
  config.builder_config = "small"
  config.data_dir = str(data_dir)
  config.checkpoint = "random:tiny"
  config.k = 3
  config.num_rounds = ROUNDS
  config.batch_size = 3  # 4 images: a batch of 3, then 1
  for k, v in overrides.items():
    setattr(config, k, v)
  return config


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("clicks")
  config = _config(tmp / "tfds")
  results = interactive.run(config, str(tmp / "w"), progress=False)
  return tmp, config, results


def _rows(workdir):
  with open(workdir / "clicks.csv", newline="") as f:
    return list(csv.DictReader(f))


def test_writes_every_output(first_run):
  tmp, _, results = first_run
  w = tmp / "w"
  rows = _rows(w)
  ids = sorted({r["id"] for r in rows})
  assert ids == [f"phantom_{i:03d}" for i in range(6, 10)]
  assert list(rows[0]) == list(interactive.CLICK_FIELDS)
  assert len(rows) == len(ids) * len(STARTS) * (ROUNDS + 1)
  for r in rows:
    if r["round"] == "0":
      assert (r["x"], r["y"], r["label"]) == ("-1", "-1", "-1")
    else:
      assert r["label"] in ("0", "1", "-1")
      assert (r["x"] == "-1") == (r["label"] == "-1")
    assert 0.0 <= float(r["iou"]) <= float(r["dsc"]) + 1e-6 <= 1.0 + 1e-6
  saved = json.loads((w / "noc.json").read_text())
  assert saved["starts"] == STARTS and saved["num_images"] == 4
  assert set(saved["wilcoxon"]) == {f"{a} vs {b}: noc@{t}" for a, b in
                                    [("box", "simsam"), ("box", "clicks_only"),
                                     ("simsam", "clicks_only")] for t in (85, 90)}
  assert saved["checkpoint"]["random_weights"] is True
  table = (w / "table.md").read_text()
  assert "| simsam |" in table and "Clicks SimSAM saves over SAM" in table
  figures = sorted(p.name for p in (w / "figures").glob("*.png"))
  assert figures == ["miou_vs_clicks.png", "phantom_006.png"]


def test_noc_recomputed_from_clicks_csv(first_run):
  """NoC, NoF and mIoU from the CSV by a direct loop, as RITM counts them
  (plus round 0: a start already at the threshold needs no click)."""
  tmp, _, _ = first_run
  rows = _rows(tmp / "w")
  saved = json.loads((tmp / "w" / "noc.json").read_text())
  for start in STARTS:
    per_image = {}
    for r in rows:
      if r["start"] == start:
        per_image.setdefault(r["id"], {})[int(r["round"])] = float(r["iou"])
    for t in (85, 90):
      nocs, failures = [], 0
      for image_id, ious in sorted(per_image.items()):
        noc = next((k for k in range(ROUNDS + 1) if ious[k] >= t / 100), None)
        failures += noc is None
        nocs.append(ROUNDS if noc is None else noc)
        assert saved["per_image"][start][f"noc@{t}"][image_id] == nocs[-1]
      assert saved["per_start"][start][f"noc@{t}"] == pytest.approx(np.mean(nocs))
      assert saved["per_start"][start][f"nof@{t}"] == failures
    for k in (1, 3):
      expected = np.mean([ious[k] for ious in per_image.values()])
      assert saved["per_start"][start][f"miou@{k}"] == pytest.approx(expected, abs=1e-6)
    assert "miou@5" not in saved["per_start"][start]  # only k <= N


def test_simsam_start_is_the_evaluations_simsam_mask(first_run):
  """Round 0 of the simsam start uses evaluate's per-image key: same IoU."""
  tmp, config, _ = first_run
  eval_config = _config(tmp / "tfds")
  from simsam_jax.evaluation.config import get_eval_config
  e = get_eval_config("phantom")
  for name in ("builder_config", "data_dir", "checkpoint", "k", "seed", "split"):
    e[name] = eval_config[name]
  e.methods, e.num_figures = "sam,simsam", 0
  ev.evaluate(e, str(tmp / "eval"), progress=False)
  with open(tmp / "eval" / "per_image.csv", newline="") as f:
    evaluated = {(r["id"], r["method"]): float(r["iou"]) for r in csv.DictReader(f)}
  for r in _rows(tmp / "w"):
    if r["round"] == "0" and r["start"] in ("box", "simsam"):
      method = "sam" if r["start"] == "box" else "simsam"
      assert float(r["iou"]) == pytest.approx(evaluated[(r["id"], method)], abs=1e-6)


def test_resume_recomputes_only_missing_images(first_run, monkeypatch):
  tmp, config, _ = first_run
  w = tmp / "w"
  rows = _rows(w)
  kept = [r for r in rows if not (r["id"] == "phantom_008" and r["start"] == "simsam")]
  with open(w / "clicks.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=interactive.CLICK_FIELDS)
    writer.writeheader()
    writer.writerows(kept)
    f.write("phantom_009,box,2,4")  # a torn line
  calls = []
  original = interactive.InteractiveSam.run_batch
  monkeypatch.setattr(interactive.InteractiveSam, "run_batch",
                      lambda self, pixels, *a, **k: calls.append(len(pixels)) or
                      original(self, pixels, *a, **k))
  before = json.loads((w / "noc.json").read_text())
  interactive.run(config, str(w), progress=False)
  assert calls == [1]
  key = lambda r: (r["id"], r["start"], r["round"])
  assert sorted(map(key, _rows(w))) == sorted(map(key, rows))
  again = {key(r): r for r in _rows(w)}
  for r in rows:
    assert again[key(r)] == r
  after = json.loads((w / "noc.json").read_text())
  assert after["per_start"] == before["per_start"]


def test_refuses_another_config(first_run):
  tmp, _, _ = first_run
  with pytest.raises(ev.EvaluationError, match="different config"):
    interactive.run(_config(tmp / "tfds", num_rounds=ROUNDS + 1), str(tmp / "w"),
                    progress=False)


@pytest.mark.parametrize("field,value,match", [
    ("num_rounds", 0, "num_rounds"),
    ("starts", "box,nope", "starts"),
    ("starts", "", "starts"),
    ("mask_prompt", "nope", "mask_prompt"),
])
def test_bad_input_before_any_output(tmp_path, field, value, match):
  with pytest.raises(ev.EvaluationError, match=match):
    interactive.run(_config(tmp_path / "tfds", **{field: value}), str(tmp_path / "w"),
                    progress=False)
  assert not (tmp_path / "w").exists()


def test_no_ground_truth_is_refused():
  config = _config("unused")
  with pytest.raises(ev.EvaluationError, match="no ground-truth mask"):
    interactive._check_ground_truth([{"id": "a", "image": np.zeros((4, 4, 3))}], config)
  with pytest.raises(ev.EvaluationError, match="normal.png: empty ground-truth"):
    interactive._check_ground_truth(
        [{"id": "a", "image_file": "normal.png", "mask": np.zeros((4, 4))}], config)


def test_cli_error_exit(tmp_path):
  run = subprocess.run(
      [sys.executable, "-m", "simsam_jax.interactive",
       "--config=configs/interactive.py:phantom,runlocal", f"--workdir={tmp_path / 'w'}",
       "--config.num_rounds=0"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert run.returncode == 1, run.stderr[-2000:]
  assert "--config.num_rounds" in run.stderr and "Traceback" not in run.stderr
  assert not (tmp_path / "w").exists()
