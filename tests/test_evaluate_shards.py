"""Evaluation shared by several processes: shards equal a one-process run."""

import csv
import json
import os
import re
import pathlib
import socket
import subprocess
import sys

import pytest

from simsam_jax import evaluate as ev
from simsam_jax.evaluation.config import get_eval_config

REPO = pathlib.Path(__file__).resolve().parents[1]
METHODS = "sam,simsam,k1"
# Everything a row holds that depends on the computation (not on who ran it).
ROW_FIELDS = ("id", "split", "image_file", "method", "dsc", "iou", "nsd", "confidence",
              "chosen", "foreground")


def _config(data_dir, **overrides):
  config = get_eval_config("phantom")
  config.builder_config = "small"
  config.checkpoint = "random:tiny"
  config.k = 3
  config.methods = METHODS
  config.num_figures = 3
  config.data_dir = str(data_dir)
  for key, value in overrides.items():
    setattr(config, key, value)
  return config


def _rows(path):
  with open(path, newline="") as f:
    return sorted(tuple(r[k] for k in ROW_FIELDS) for r in csv.DictReader(f))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("one_process")
  results = ev.evaluate(_config(data_dir), str(workdir), progress=False)
  return workdir, results


def test_sequential_shards_equal_one_process(data_dir, reference, tmp_path):
  ref_dir, ref_results = reference
  ids = sorted({r[0] for r in _rows(ref_dir / "per_image.csv")})
  assert len(ids) == 4

  first = ev.evaluate(_config(data_dir, num_shards=2, shard_index=0), str(tmp_path),
                      progress=False)
  assert first["complete"] is False and first["missing_images"] == 2
  assert not (tmp_path / "results.json").exists() and not (tmp_path / "per_image.csv").exists()
  own = _rows(tmp_path / "shards" / "00000-of-00002.csv")
  assert sorted({r[0] for r in own}) == ids[0::2]
  assert sorted(p.stem for p in (tmp_path / "figures").glob("*.png")) == [ids[0], ids[2]]
  assert json.loads((tmp_path / "shards" / "00000-of-00002.skipped.json").read_text()) == []

  second = ev.evaluate(_config(data_dir, num_shards=2, shard_index=1), str(tmp_path),
                       progress=False)
  assert second["complete"] is True and second["num_images"] == 4
  assert _rows(tmp_path / "per_image.csv") == _rows(ref_dir / "per_image.csv")
  assert (tmp_path / "table.md").read_text() == (ref_dir / "table.md").read_text()
  assert second["summaries"] == ref_results["summaries"]
  assert sorted(p.stem for p in (tmp_path / "figures").glob("*.png")) == ids[:3]

  # A re-run of any shard finds everything done and rewrites the same report.
  again = ev.evaluate(_config(data_dir, num_shards=2, shard_index=0), str(tmp_path),
                      progress=False)
  assert again["complete"] is True
  assert _rows(tmp_path / "per_image.csv") == _rows(ref_dir / "per_image.csv")


def test_one_process_run_resumes_from_shard_files(data_dir, reference, tmp_path):
  """Switching from shards back to one process reuses every row already done."""
  ref_dir, _ = reference
  ev.evaluate(_config(data_dir, num_shards=2, shard_index=1), str(tmp_path), progress=False)
  shard_rows = _rows(tmp_path / "shards" / "00001-of-00002.csv")
  ev.evaluate(_config(data_dir), str(tmp_path), progress=False)
  merged = _rows(tmp_path / "per_image.csv")
  assert merged == _rows(ref_dir / "per_image.csv")
  assert set(shard_rows) <= set(merged)


def test_reading_another_shard_never_truncates_its_file(tmp_path):
  path = tmp_path / "shards" / "00001-of-00002.csv"
  path.parent.mkdir()
  torn = "id,method\nphantom_006,sam\nphantom_007,si"
  path.write_text(torn)
  rows = ev.merged_rows(str(tmp_path))
  assert [(r["id"], r["method"]) for r in rows] == [("phantom_006", "sam")]
  assert path.read_text() == torn


@pytest.mark.parametrize("overrides, message", [
    (dict(num_shards=2, shard_index=2), "shard_index=2"),
    (dict(num_shards=-1), "num_shards=-1"),
    (dict(distributed="localhost:1234"), "HOST:PORT,NUM_PROCESSES,PROCESS_ID"),
])
def test_bad_shard_settings_are_refused_before_any_write(data_dir, tmp_path, overrides, message):
  workdir = tmp_path / "w"
  with pytest.raises(ev.EvaluationError, match=message):
    ev.evaluate(_config(data_dir, **overrides), str(workdir), progress=False)
  assert not workdir.exists()


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_jax_processes_share_the_work(data_dir, reference, tmp_path):
  """`--config.distributed=HOST:PORT,2,I --config.num_shards=0`: one shard per
  JAX process, run concurrently like the hosts of a pod, both building the
  dataset into one fresh data_dir at the same time; the merged result is the
  one-process result."""
  ref_dir, _ = reference
  address = f"127.0.0.1:{_free_port()}"
  workdir = tmp_path / "w"
  data_dir = tmp_path / "fresh_tfds"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen(
      [sys.executable, "-m", "simsam_jax.evaluate", "--config=configs/eval.py:phantom",
       f"--workdir={workdir}", f"--config.data_dir={data_dir}",
       "--config.builder_config=small", "--config.checkpoint=random:tiny", "--config.k=3",
       f"--config.methods={METHODS}", "--config.num_figures=3", "--config.num_shards=0",
       f"--config.distributed={address},2,{i}"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  assert (workdir / "shards" / "00000-of-00002.csv").exists()
  assert (workdir / "shards" / "00001-of-00002.csv").exists()
  assert _rows(workdir / "per_image.csv") == _rows(ref_dir / "per_image.csv")
  assert (workdir / "table.md").read_text() == (ref_dir / "table.md").read_text()
  printed = "".join(out for out, _ in outputs)
  assert "| simsam |" in printed  # at least the last one printed the table
  # library INFO logs (absl, TFDS, Orbax, jax.distributed) go to the workdir
  console = printed + "".join(err for _, err in outputs)
  assert not re.search(r"^I\d{4} ", console, re.M), console[-2000:]
  assert "Downloading and preparing" not in console
  assert (workdir / "logs" / "evaluate.log").stat().st_size > 0
