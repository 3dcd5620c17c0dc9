"""The main job (`python -m simsam_jax.demo`) on the small phantom config.

The full-size run, exactly as the README shows it, is in test_readme.py.
"""

import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from simsam_jax import demo
from simsam_jax import evaluate as ev

SMALL = ["--config.builder_config=small", "--config.k=6", "--config.num_figures=2"]


def _run_cli(*args, cwd=None):
  return subprocess.run([sys.executable, "-m", "simsam_jax.demo", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=600)


def _rows(workdir):
  with open(os.path.join(workdir, "per_image.csv"), newline="") as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("demo") / "run"
  proc = _run_cli(f"--workdir={workdir}", *SMALL)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc


def test_cli_writes_the_outputs_of_an_evaluation(cli_run):
  workdir, proc = cli_run
  for name in demo.OUTPUTS:
    assert (workdir / name).exists(), name
  methods = demo.DEMO_METHODS.split(",")
  rows = _rows(workdir)
  ids = sorted({r["id"] for r in rows})
  assert ids == [f"phantom_{i:03d}" for i in range(6, 10)]  # the small test split
  assert sorted((r["id"], r["method"]) for r in rows) == sorted(
      (i, m) for i in ids for m in methods)
  results = json.loads((workdir / "results.json").read_text())
  assert results["methods"] == methods and results["num_images"] == 4
  assert results["checkpoint"]["random_weights"] is False
  assert results["config"]["k"] == 6 and results["dataset"] == "phantom"
  table = (workdir / "table.md").read_text()
  for m in methods:
    assert f"| {m} |" in table
  assert len(list((workdir / "figures").glob("*.png"))) == 2
  # The dataset is built inside the workdir: nothing is downloaded.
  assert (workdir / "tensorflow_datasets" / "phantom" / "small").is_dir()


def test_cli_says_the_model_knows_phantoms_only_and_what_to_run_next(cli_run):
  workdir, proc = cli_run
  assert "PHANTOM MODEL" in proc.stdout and "phantoms only" in proc.stdout
  assert "RANDOM WEIGHTS" not in proc.stdout
  assert "python -m simsam_jax.convert" in proc.stdout
  assert "--config.checkpoint=checkpoints/sam_vit_b" in proc.stdout
  assert (workdir / "table.md").read_text() in proc.stdout


def test_the_phantom_model_segments_phantoms(cli_run):
  """The default model is trained: box-only SAM well above 80 % DSC."""
  workdir, _ = cli_run
  results = json.loads((workdir / "results.json").read_text())
  assert results["checkpoint"]["random_weights"] is False
  assert results["checkpoint"]["path"] == demo.DEMO_CHECKPOINT
  dsc = {m: float(np.mean([float(r["dsc"]) for r in _rows(workdir) if r["method"] == m]))
         for m in ("sam", "simsam")}
  assert dsc["sam"] >= 0.8 and dsc["simsam"] >= 0.8, dsc


def test_console_is_clean_and_library_logs_go_to_the_workdir(cli_run):
  """Progress, table and paths on the console; TFDS's "Downloading and
  preparing dataset Unknown size" and absl INFO lines in WORKDIR/logs."""
  workdir, proc = cli_run
  console = proc.stdout + proc.stderr
  assert "Downloading and preparing" not in console
  assert not re.search(r"^I\d{4} ", console, re.M), console[-2000:]  # absl INFO prefix
  log = (workdir / "logs" / "demo.log").read_text()
  assert "Downloading and preparing dataset" in log
  assert f"Library logs: {workdir / 'logs' / 'demo.log'}" in proc.stdout


def test_random_weights_still_run_and_say_so_and_verbosity_brings_logs_back(tmp_path):
  workdir = tmp_path / "run"
  proc = _run_cli(f"--workdir={workdir}", *SMALL, "--config.methods=sam",
                  "--config.checkpoint=random:tiny_1024", "--verbosity=1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "RANDOM WEIGHTS" in proc.stdout and "meaningless" in proc.stdout
  assert "--config.checkpoint=checkpoints/sam_vit_b" in proc.stdout
  assert "Downloading and preparing dataset" in proc.stdout + proc.stderr
  assert not (workdir / "logs").exists()
  results = json.loads((workdir / "results.json").read_text())
  assert results["checkpoint"]["random_weights"] is True


def test_rerun_resumes_without_recomputing(cli_run):
  workdir, _ = cli_run
  before = (workdir / "per_image.csv").read_bytes()
  config = demo.demo_config()
  config.builder_config, config.k, config.num_figures = "small", 6, 2
  results = demo.run(config, str(workdir), progress=False)
  assert (workdir / "per_image.csv").read_bytes() == before
  assert results["num_images"] == 4


def test_changed_config_is_refused_and_the_workdir_kept(cli_run):
  workdir, _ = cli_run
  before = sorted(p.name for p in workdir.iterdir())
  proc = _run_cli(f"--workdir={workdir}", *SMALL[:1], "--config.k=7")
  assert proc.returncode == 1
  assert "different config" in proc.stderr and "k: 6 -> 7" in proc.stderr
  assert sorted(p.name for p in workdir.iterdir()) == before


@pytest.mark.parametrize("flag, message", [
    ("--config.checkpoint=no/such/folder", "no/such/folder"),
    ("--config.checkpoint=random:vit_z", "vit_z"),
    ("--config.methods=simsam,nope", "nope"),
    ("--config.split=val", "val"),
    ("--config.builder_config=huge", "huge"),
])
def test_bad_input_exits_nonzero_and_leaves_nothing(tmp_path, flag, message):
  workdir = tmp_path / "fresh"
  proc = _run_cli(f"--workdir={workdir}", *SMALL, flag)
  assert proc.returncode == 1, proc.stdout[-2000:]
  assert "simsam_jax.demo: error:" in proc.stderr and message in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not workdir.exists()


def test_workdir_is_required_and_must_be_a_folder(tmp_path):
  proc = _run_cli(*SMALL)
  assert proc.returncode == 1 and "--workdir is required" in proc.stderr
  a_file = tmp_path / "file"
  a_file.write_text("x")
  proc = _run_cli(f"--workdir={a_file}", *SMALL)
  assert proc.returncode == 1 and "not a folder" in proc.stderr
  assert a_file.read_text() == "x"


def test_run_keeps_an_existing_workdir_on_error(tmp_path):
  (tmp_path / "keep.txt").write_text("mine")
  config = demo.demo_config()
  config.checkpoint = "random:no_such_preset"
  with pytest.raises(ev.EvaluationError, match="no_such_preset"):
    demo.run(config, str(tmp_path), progress=False)
  assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
