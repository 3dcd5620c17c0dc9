"""End-to-end evaluation on a generated dataset with a small random model."""

import csv
import importlib.util
import json
import os
import pathlib

import numpy as np
import pytest

import data_fixtures
from simsam_jax import evaluate as ev

REPO = pathlib.Path(__file__).resolve().parents[1]
CASES = {("malignant", 1): 0, ("malignant", 2): 1, ("malignant", 7): 0,
         ("benign", 211): 0, ("benign", 300): 1, ("normal", 3): 0}


def _config(name="eval.py", arg="busi,runlocal", **overrides):
  spec = importlib.util.spec_from_file_location("cfg", REPO / "configs" / name)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg)
  config.checkpoint = "random:tiny"
  config.k = 3
  config.split = "all"
  for k, v in overrides.items():
    setattr(config, k, v)
  return config


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("busi_manual")
  data_fixtures.make_busi_tree(root, CASES)
  return {"manual_dir": str(root), "data_dir": str(tmp_path_factory.mktemp("tfds"))}


@pytest.fixture(scope="module")
def first_run(dataset, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run") / "w")
  config = _config(data_dir=dataset["data_dir"], manual_dir=dataset["manual_dir"],
                   save_masks=True, num_figures=2)
  results = ev.evaluate(config, workdir, progress=False)
  return workdir, config, results


def _rows(workdir):
  with open(os.path.join(workdir, "per_image.csv"), newline="") as f:
    return list(csv.DictReader(f))


def test_writes_every_output(first_run):
  workdir, config, results = first_run
  methods = config.methods.split(",")
  rows = _rows(workdir)
  ids = sorted({r["id"] for r in rows})
  # paper437: malignant 1-210 and benign 211-437; normal excluded.
  assert ids == ["benign_211", "benign_300", "malignant_1", "malignant_2", "malignant_7"]
  assert len(rows) == len(ids) * len(methods)
  assert {r["method"] for r in rows} == set(methods)
  for r in rows:
    assert r["image_file"].endswith(".png") and "_mask" in r["mask_files"]
    for metric in ("dsc", "iou", "nsd"):
      assert 0.0 <= float(r[metric]) <= 1.0
  with open(os.path.join(workdir, "results.json")) as f:
    saved = json.load(f)
  assert saved["num_images"] == 5
  assert set(saved["summaries"]) == set(methods)
  assert saved["empty_mask_policy"]["name"]
  assert saved["checkpoint"]["random_weights"] is True
  assert saved["software"]["jax"] and saved["config"]["k"] == 3
  simsam_vs_sam = saved["statistics"]["comparisons"]["simsam"]["nsd"]
  assert "p_value" in simsam_vs_sam["wilcoxon"] and "low" in simsam_vs_sam["bootstrap"]
  table = open(os.path.join(workdir, "table.md")).read()
  assert "| simsam |" in table and "± " in table and "NSD" in table
  figures = sorted(os.listdir(os.path.join(workdir, "figures")))
  assert figures == ["benign_211.png", "benign_300.png"]
  for m in methods:
    assert sorted(os.listdir(os.path.join(workdir, "masks", m))) == [f"{i}.png" for i in ids]
  # The per-image means in results.json are the means of the CSV rows.
  nsd = [float(r["nsd"]) for r in rows if r["method"] == "simsam"]
  assert saved["summaries"]["simsam"]["nsd"]["mean"] == pytest.approx(np.mean(nsd), abs=1e-6)


def test_resume_recomputes_only_missing_rows(first_run, dataset, monkeypatch):
  workdir, config, _ = first_run
  rows = _rows(workdir)
  kept = [r for r in rows if not (r["id"] == "malignant_2" and r["method"] in ("simsam", "k1"))]
  with open(os.path.join(workdir, "per_image.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=ev.CSV_FIELDS)
    writer.writeheader()
    writer.writerows(kept)
    # A torn line, as if the process was killed mid-write.
    f.write("malignant_7,all,x.png,y.png,simsam,0.5")
  calls = []
  original = ev.runner_lib.BatchRunner.dispatch
  monkeypatch.setattr(ev.runner_lib.BatchRunner, "dispatch", lambda self, items: calls.extend(
      i.prepared.id for i in items) or original(self, items))
  ev.evaluate(config, workdir, progress=False)
  assert calls == ["malignant_2"]
  again = _rows(workdir)
  assert len(again) == len(rows)
  key = lambda r: (r["id"], r["method"])
  before, after = {key(r): r for r in rows}, {key(r): r for r in again}
  assert before.keys() == after.keys()
  for k in before:  # recomputed rows are identical (deterministic per image)
    assert before[k] == after[k], k


def test_refuses_a_workdir_with_another_config(first_run):
  workdir, config, _ = first_run
  other = _config(data_dir=config.data_dir, manual_dir=config.manual_dir, k=5)
  with pytest.raises(ev.EvaluationError, match="different config"):
    ev.evaluate(other, workdir, progress=False)


def test_bad_inputs(dataset, tmp_path):
  with pytest.raises(ev.EvaluationError, match="unknown method"):
    ev.evaluate(_config(methods="sam,nope", data_dir=dataset["data_dir"]), str(tmp_path / "a"),
                progress=False)
  with pytest.raises(ev.EvaluationError, match="checkpoint"):
    ev.evaluate(_config(checkpoint=str(tmp_path / "none"), data_dir=dataset["data_dir"],
                        manual_dir=dataset["manual_dir"]), str(tmp_path / "b"), progress=False)
  missing = tmp_path / "no_manual_dir"
  with pytest.raises(ev.EvaluationError, match="no_manual_dir"):
    ev.evaluate(_config(data_dir=str(tmp_path / "tfds2"), manual_dir=str(missing)),
                str(tmp_path / "c"), progress=False)


def test_every_config_file_loads():
  for path in sorted((REPO / "configs").glob("*.py")):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    if path.stem == "pretrain_phantom":  # trains on the generated stream
      from simsam_jax.training.image_trainer import PHANTOM_STREAM
      assert config.dataset == PHANTOM_STREAM
      assert "python -m simsam_jax.finetune" in module.__doc__, path
    else:
      assert config.dataset in ("busi", "cvc_clinicdb", "isic2016"), path
      assert "python -m simsam_jax.evaluate" in module.__doc__, path
    assert config.protocol in ("paper", "native")


def _tree_with_bad_mask(root):
  data_fixtures.make_busi_tree(root, {("malignant", 1): 0, ("malignant", 2): 0,
                                      ("malignant", 4): 0, ("benign", 300): 0,
                                      ("normal", 3): 0})
  bad = root / "Dataset_BUSI_with_GT" / "malignant" / "malignant (4)_mask.png"
  data_fixtures.save_png(bad, np.zeros((5, 7), bool), mode="1")  # wrong size
  return root


def test_bad_example_raises_naming_the_file(tmp_path):
  manual = _tree_with_bad_mask(tmp_path / "manual")
  config = _config(data_dir=str(tmp_path / "tfds"), manual_dir=str(manual))
  with pytest.raises(ev.EvaluationError, match=r"malignant \(4\)"):
    ev.evaluate(config, str(tmp_path / "w"), progress=False)


def test_bad_example_skipped_and_listed(tmp_path):
  manual = _tree_with_bad_mask(tmp_path / "manual")
  config = _config(data_dir=str(tmp_path / "tfds"), manual_dir=str(manual),
                   on_bad_example="skip", methods="sam,simsam", num_figures=0)
  results = ev.evaluate(config, str(tmp_path / "w"), progress=False)
  assert results["num_images"] == 3
  skipped = results["skipped"]["while_building"]
  assert len(skipped) == 1 and "malignant (4)" in json.dumps(skipped)
  with open(tmp_path / "w" / "results.json") as f:
    assert "malignant (4)" in f.read()


def test_cli_error_exit(tmp_path):
  import subprocess
  import sys
  run = subprocess.run(
      [sys.executable, "-m", "simsam_jax.evaluate", "--config=configs/eval.py:busi,runlocal",
       f"--workdir={tmp_path / 'w'}", f"--config.data_dir={tmp_path / 'tfds'}",
       f"--config.manual_dir={tmp_path / 'missing_manual'}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert run.returncode == 1, run.stderr[-2000:]
  assert "missing_manual" in run.stderr and "Traceback" not in run.stderr
