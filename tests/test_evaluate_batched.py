"""Batched evaluation: batch 4 on 4 devices equals batch 1 on 1 device, one
compilation per run, bad batch sizes refused before any work."""

import csv
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from simsam_jax import evaluate as ev
from simsam_jax.data import loading, protocols
from simsam_jax.evaluation import metrics
from simsam_jax.evaluation import runner as runner_lib
from simsam_jax.evaluation.config import get_eval_config

REPO = pathlib.Path(__file__).resolve().parents[1]
METHODS = "sam,simsam,k1"
NUM_IMAGES = 24  # the phantom test split
DONE_BEFORE = 2  # images already in the workdir: 22 left = 5 batches of 4 + 2
FLOATS = ("dsc", "iou", "nsd", "confidence", "foreground")


def _config(data_dir, **overrides):
  config = get_eval_config("phantom")
  config.checkpoint = "random:tiny"
  config.k = 3
  config.methods = METHODS
  config.num_figures = 3
  config.data_dir = str(data_dir)
  config.batch_size = 1
  for key, value in overrides.items():
    setattr(config, key, value)
  return config


def _rows(path):
  with open(path, newline="") as f:
    return {(r["id"], r["method"]): r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
  """Batch 1 on one device, masks saved."""
  workdir = tmp_path_factory.mktemp("batch1")
  ev.evaluate(_config(data_dir, save_masks=True), str(workdir), progress=False)
  return workdir


# Runs in a fresh interpreter: the forced host devices must be set before JAX
# initialises. Counts compilations of the step and every XLA compilation after
# the first batch came back.
_BATCHED = r"""
import json, sys
import jax
from jax import monitoring
from simsam_jax import evaluate as ev
from simsam_jax.evaluation import runner as runner_lib
from simsam_jax.evaluation.config import get_eval_config

assert jax.local_device_count() == 4, jax.devices()
runners, fetched, late = [], [], []
init, fetch = runner_lib.BatchRunner.__init__, runner_lib.BatchRunner.fetch
def record_init(self, *a, **k):
  init(self, *a, **k)
  runners.append(self)
def record_fetch(self, handle):
  out = fetch(self, handle)
  fetched.append(len(out))
  return out
runner_lib.BatchRunner.__init__ = record_init
runner_lib.BatchRunner.fetch = record_fetch
def listener(event, duration, **kwargs):
  # compiled, or taken from the persistent compilation cache instead
  if event in ("/jax/core/compile/backend_compile_duration",
               "/jax/compilation_cache/cache_retrieval_time_sec") and fetched:
    late.append(event)
monitoring.register_event_duration_secs_listener(listener)

config = get_eval_config("phantom")
config.update(json.loads(sys.argv[2]))
ev.evaluate(config, sys.argv[1], progress=False)
print("RESULT " + json.dumps({"compilations": runners[0].compilations(),
                              "batches": fetched, "late_compilations": len(late)}))
"""


def _run_forced_devices(workdir, overrides, script=_BATCHED):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  return subprocess.run([sys.executable, "-c", script, str(workdir), json.dumps(overrides)],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def batched(data_dir, reference, tmp_path_factory):
  """Batch 4 on 4 forced host devices, resuming a workdir that holds the rows
  of the first DONE_BEFORE images (so 22 images run: a partial last batch)."""
  workdir = tmp_path_factory.mktemp("batch4")
  ref = _rows(reference / "per_image.csv")
  first = sorted({i for i, _ in ref})[:DONE_BEFORE]
  (workdir / "config.json").write_text((reference / "config.json").read_text())
  with open(workdir / "per_image.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=ev.CSV_FIELDS)
    writer.writeheader()
    writer.writerows(r for (i, _), r in sorted(ref.items()) if i in first)
  (workdir / "figures").mkdir()
  for i in first:  # their figures too, else they would run again for them
    (workdir / "figures" / f"{i}.png").write_bytes(
        (reference / "figures" / f"{i}.png").read_bytes())
  overrides = dict(checkpoint="random:tiny", k=3, methods=METHODS, num_figures=3,
                   data_dir=str(data_dir), batch_size=4)
  proc = _run_forced_devices(workdir, overrides)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
  return workdir, json.loads(line[len("RESULT "):])


def test_batch_4_on_4_devices_equals_batch_1(reference, batched):
  workdir, stats = batched
  ref, got = _rows(reference / "per_image.csv"), _rows(workdir / "per_image.csv")
  assert len(ref) == NUM_IMAGES * 3 and ref.keys() == got.keys()
  assert stats["batches"] == [4, 4, 4, 4, 4, 2]  # 22 images, padded last batch
  for key in ref:
    a, b = ref[key], got[key]
    for field in ("id", "split", "image_file", "mask_files", "method", "chosen"):
      assert a[field] == b[field], (key, field)
    for field in FLOATS:
      assert float(a[field]) == pytest.approx(float(b[field]), abs=1e-6, nan_ok=True), \
          (key, field)
  # The fixture is decisive: no empty or full mask, mean coverage 5-95% per
  # method, SimSAM's pick differs between images and its masks from SAM's.
  assert all(0.01 < float(r["foreground"]) < 0.99 for r in ref.values())
  for m in METHODS.split(","):
    assert 0.05 < np.mean([float(r["foreground"]) for (_, n), r in ref.items() if n == m]) < 0.95
  ids = sorted({i for i, _ in ref})
  assert len({ref[(i, "simsam")]["chosen"] for i in ids}) >= 2
  assert sum(ref[(i, "simsam")]["dsc"] != ref[(i, "sam")]["dsc"] for i in ids) > len(ids) // 2
  # The same reports and figures.
  assert (workdir / "table.md").read_text() == (reference / "table.md").read_text()
  names = sorted(p.name for p in (reference / "figures").glob("*.png"))
  assert names == sorted(p.name for p in (workdir / "figures").glob("*.png"))
  for name in names[DONE_BEFORE:]:
    assert np.array_equal(np.asarray(Image.open(reference / "figures" / name)),
                          np.asarray(Image.open(workdir / "figures" / name))), name


def test_one_compilation_over_the_run(batched):
  """22 images in 6 batches (the last one padded): the step compiled once and
  nothing at all compiled after the first batch came back."""
  _, stats = batched
  assert sum(stats["batches"]) >= 20
  assert stats["compilations"] == 1
  assert stats["late_compilations"] == 0


def test_device_metrics_equal_the_reference_metrics(reference, data_dir):
  """DSC and IoU computed on the device equal `metrics.dice` / `metrics.iou`
  of the saved masks; the CSV's NSD and foreground are those of the masks."""
  rows = _rows(reference / "per_image.csv")
  builder = loading.get_builder("phantom", data_dir, "default")
  examples = {e["id"]: e for e in loading.iter_split(builder, "test")}
  for (i, m), row in rows.items():
    gt = protocols.prepare(examples[i], "paper", "phantom").mask
    pred = np.asarray(Image.open(reference / "masks" / m / f"{i}.png")) > 0
    assert float(row["dsc"]) == pytest.approx(metrics.dice(pred, gt), abs=1e-6)
    assert float(row["iou"]) == pytest.approx(metrics.iou(pred, gt), abs=1e-6)
    assert float(row["nsd"]) == pytest.approx(metrics.nsd(pred, gt), abs=1e-6)
    assert float(row["foreground"]) == pytest.approx(pred.mean(), abs=1e-6)


def test_empty_masks_follow_the_policy():
  import jax.numpy as jnp
  empty, full = jnp.zeros((4, 4), bool), jnp.ones((4, 4), bool)
  for policy, both in ((metrics.PUBLISHED_POLICY, np.nan), (metrics.BOTH_EMPTY_IS_ONE, 1.0)):
    dsc, iou = runner_lib._overlap(empty, empty, policy)
    np.testing.assert_equal([float(dsc), float(iou)], [both, both])
    dsc, iou = runner_lib._overlap(empty, full, policy)
    assert float(dsc) == float(iou) == 0.0


def test_automatic_batch_size():
  assert runner_lib.resolve_batch_size(0, num_devices=1, platform="cpu") == 1
  assert runner_lib.resolve_batch_size(0, num_devices=4, platform="cpu") == 4
  assert runner_lib.resolve_batch_size(0, num_devices=2, platform="gpu") == 16
  assert runner_lib.resolve_batch_size(8, num_devices=4, platform="tpu") == 8


def test_bad_batch_size_refused_before_any_write(data_dir, tmp_path):
  workdir = tmp_path / "w"
  with pytest.raises(ev.EvaluationError, match="--config.batch_size=-1 must be positive"):
    ev.evaluate(_config(data_dir, batch_size=-1), str(workdir), progress=False)
  assert not workdir.exists()
  with pytest.raises(ValueError, match="--config.batch_size must be an integer"):
    runner_lib.resolve_batch_size(2.5)


def test_cli_refuses_a_batch_not_divisible_by_the_devices(data_dir, tmp_path):
  workdir = tmp_path / "w"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  proc = subprocess.run(
      [sys.executable, "-m", "simsam_jax.evaluate", "--config=configs/eval.py:phantom",
       f"--workdir={workdir}", f"--config.data_dir={tmp_path / 'tfds'}",
       "--config.checkpoint=random:tiny", "--config.batch_size=6"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert "--config.batch_size=6 is not a multiple of the 4 local devices" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not workdir.exists() and not (tmp_path / "tfds").exists()


def test_batches_group_images_by_size():
  """The `native` protocol: one batch shape per image size, failed items
  passed on alone, in order; leftovers at the end, one batch per size."""
  from simsam_jax.processing import ImageInfo
  a, b = ImageInfo((300, 200), (1024, 683), 1024), ImageInfo((200, 300), (683, 1024), 1024)
  items = [runner_lib.Item(example={"id": str(n)}, info=info, error=error)
           for n, (info, error) in enumerate([(a, ""), (b, ""), (a, ""), (None, "bad"),
                                              (a, ""), (b, ""), (a, "")])]
  out = [[i.example["id"] for i in x] if isinstance(x, list) else x.error
         for x in runner_lib.batches(items, 3)]
  assert out == ["bad", ["0", "2", "4"], ["1", "5"], ["6"]]
