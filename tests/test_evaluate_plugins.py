"""Evaluation plug-ins (a user's module registers a metric and a click strategy
through `--config.import_modules`; methods as a dict of SimSamConfig
overrides) and workdir ownership (two runs on one workdir)."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from ml_collections import ConfigDict

from simsam_jax import workdir as workdir_lib
from simsam_jax.data import loading
from simsam_jax.evaluation import evaluator as ev
from simsam_jax.evaluation import plugins
from simsam_jax.simsam import CLICK_STRATEGIES

REPO = pathlib.Path(__file__).resolve().parents[1]
PHANTOM_IDS = ["phantom_006", "phantom_007", "phantom_008", "phantom_009"]  # "small" test split

USER_MODULE = '''
"""A user's plug-ins: a metric and a click strategy."""
import jax.numpy as jnp
from simsam_jax.evaluation.plugins import METRICS
from simsam_jax.simsam import CLICK_STRATEGIES


@METRICS.register("truth_fraction", label="GT area")
def truth_fraction(x):
  return float(x.prepared.mask.mean())


@CLICK_STRATEGIES.register("box_centre")
def box_centre(probs, k, key, ground_truth=None, box=None):
  h, w = probs.shape
  if box is None:
    box = jnp.asarray([0, 0, w - 1, h - 1], jnp.float32)
  xy = jnp.round(jnp.stack([box[0] + box[2], box[1] + box[3]]) / 2).astype(jnp.int32)
  return jnp.tile(xy[None], (k, 1)), jnp.ones((k,), jnp.int32)
'''

# A column that holds the first image's host work until a file appears, so
# that the first run demonstrably holds the workdir while the second starts.
GATE_MODULE = '''
import os
import time
from simsam_jax.evaluation.plugins import METRICS


@METRICS.register("gate", percent=False)
def gate(x):
  for _ in range(6000):
    if os.path.exists(os.environ["SIMSAM_TEST_GATE"]):
      return 1
    time.sleep(0.05)
  raise RuntimeError("gate file never appeared")
'''


def _config(data_dir, **overrides):
  spec = importlib.util.spec_from_file_location("cfg", REPO / "configs" / "eval.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("phantom,runlocal")
  config.builder_config, config.checkpoint, config.k = "small", "random:tiny", 2
  config.data_dir, config.methods, config.num_figures = str(data_dir), "sam,simsam", 0
  for k, v in overrides.items():
    with config.ignore_type():
      setattr(config, k, v)
  return config


@pytest.fixture
def user_module(tmp_path, monkeypatch):
  name = "user_plugins_for_test"
  (tmp_path / f"{name}.py").write_text(USER_MODULE)
  monkeypatch.syspath_prepend(str(tmp_path))
  yield name
  for registry, entry in ((plugins.METRICS, "truth_fraction"),
                          (CLICK_STRATEGIES, "box_centre")):
    if entry in registry:
      registry.unregister(entry)
  sys.modules.pop(name, None)


def _rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_user_module_registers_a_metric_and_a_click_strategy(user_module, tmp_path):
  assert "box_centre" not in CLICK_STRATEGIES and "truth_fraction" not in plugins.METRICS
  methods = {"sam": {}, "simsam": {}, "centre": {"clicks": "box_centre",
                                                 "clicks_in_box": True}}
  # A ConfigDict sorts its keys unless told not to; the methods keep this order.
  config = _config(tmp_path / "tfds", import_modules=user_module,
                   methods=ConfigDict(methods, sort_keys=False),
                   metrics="dsc,iou,nsd,truth_fraction", protocol="native", num_figures=1)
  workdir = tmp_path / "run"
  results = ev.evaluate(config, str(workdir), progress=False)
  assert results["methods"] == ["sam", "simsam", "centre"]

  rows = _rows(workdir / "per_image.csv")
  with open(workdir / "per_image.csv") as f:
    header = f.readline().strip().split(",")
  assert header == list(ev.ID_FIELDS) + ["dsc", "iou", "nsd", "truth_fraction"] + list(
      plugins.names(plugins.DEFAULT_COLUMNS, "columns"))
  assert sorted((r["id"], r["method"]) for r in rows) == sorted(
      (i, m) for i in PHANTOM_IDS for m in methods)
  # The metric against the stored masks (native protocol: no resize).
  truth = {e["id"]: float((e["mask"] > 0).mean())
           for e in loading.load_split("phantom", "test", tmp_path / "tfds", config="small")}
  for r in rows:
    assert float(r["truth_fraction"]) == pytest.approx(truth[r["id"]], abs=1e-6)
  # K identical box-centre clicks -> K identical candidates -> the medoid is 0.
  assert {r["chosen"] for r in rows if r["method"] == "centre"} == {"0"}

  saved = json.loads((workdir / "results.json").read_text())
  for m in methods:
    assert saved["summaries"][m]["truth_fraction"]["mean"] == pytest.approx(
        np.mean(list(truth.values())), abs=1e-6)
  assert "truth_fraction" in saved["statistics"]["comparisons"]["centre"]
  assert saved["config"]["methods"] == methods
  table = (workdir / "table.md").read_text()
  assert "| Method | DSC ↑ | NSD ↑ | IoU ↑ | GT area |" in table
  assert "| centre |" in table
  assert (workdir / "figures" / f"{PHANTOM_IDS[0]}.png").exists()

  # Resuming with other metrics would mix rows of two schemas: refused.
  with pytest.raises(ev.EvaluationError, match="--config.metrics=dsc,iou,nsd,truth_fraction"):
    ev.evaluate(_config(tmp_path / "tfds", import_modules=user_module,
                        methods=ConfigDict(methods, sort_keys=False), protocol="native",
                        num_figures=1), str(workdir), progress=False)


@pytest.mark.parametrize("overrides,message", [
    (dict(import_modules="no_such_module_here"), "--config.import_modules: cannot import"),
    (dict(metrics="dsc,no_such_metric"), "--config.metrics: unknown metric 'no_such_metric'"),
    (dict(columns="dsc"), "both name"),
    (dict(figures="nope"), "--config.figures: unknown figure"),
    (dict(reports="nope"), "--config.reports: unknown report section"),
    (dict(methods={"x": {"kk": 3}}), "method 'x': unknown SimSamConfig fields"),
    (dict(methods={"sam": {"k": 3}}), "takes no overrides"),
    (dict(methods={"x": {"clicks": "nope"}}), "method 'x': unknown click strategy"),
    (dict(methods={"x": {"base": "nope"}}), "unknown method 'nope'"),
])
def test_bad_plugin_config_is_refused_before_any_work(overrides, message, tmp_path):
  workdir = tmp_path / "w"
  with pytest.raises(ev.EvaluationError, match=message):
    ev.evaluate(_config(tmp_path / "tfds", **overrides), str(workdir), progress=False)
  assert not workdir.exists() and not (tmp_path / "tfds").exists()


def test_methods_dict_overrides_registered_methods():
  from simsam_jax.evaluation.methods import method_configs
  configs = method_configs({"sam": {}, "random": {"k": 7}, "mine": {"aggregation": "iou_head"},
                            "r2": {"base": "random", "seed": 3}}, k=5, seed=1)
  assert configs["sam"] is None
  assert (configs["random"].clicks, configs["random"].k) == ("random", 7)
  assert (configs["mine"].clicks, configs["mine"].aggregation, configs["mine"].k) == (
      "topk", "iou_head", 5)
  assert (configs["r2"].clicks, configs["r2"].seed) == ("random", 3)
  assert method_configs("sam,k1", k=5, seed=1)["k1"].k == 1


def test_a_held_workdir_is_refused_naming_it_and_the_holder(tmp_path):
  workdir = tmp_path / "w"
  with workdir_lib.lock(str(workdir)):
    with pytest.raises(ev.EvaluationError, match=f"--workdir={workdir} is in use by "
                       f"another run \\(pid {os.getpid()}\\)"):
      ev.evaluate(_config(tmp_path / "tfds"), str(workdir), progress=False)
    # One shard of a sharded run is refused too, while another shard is free.
    with pytest.raises(ev.EvaluationError, match="in use"):
      ev.evaluate(_config(tmp_path / "tfds", num_shards=2, shard_index=1), str(workdir),
                  progress=False)
  with workdir_lib.lock(str(workdir), (0, 2)):
    with workdir_lib.lock(str(workdir), (1, 2)):
      with pytest.raises(workdir_lib.WorkdirBusy, match=f"shard 1 of 2 .*pid {os.getpid()}"):
        with workdir_lib.lock(str(workdir), (1, 2)):
          pass
  assert not (tmp_path / "tfds").exists()  # refused before building the dataset
  # A refused run in a new workdir leaves nothing behind.
  with pytest.raises(ev.EvaluationError, match="checkpoint"):
    ev.evaluate(_config(tmp_path / "tfds", checkpoint="random:nope"), str(tmp_path / "new"),
                progress=False)
  assert not (tmp_path / "new").exists()


def test_two_processes_on_one_workdir(tmp_path):
  (tmp_path / "gate_plugin.py").write_text(textwrap.dedent(GATE_MODULE))
  gate = tmp_path / "open_the_gate"
  workdir = tmp_path / "w"
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(tmp_path)]),
             SIMSAM_TEST_GATE=str(gate), JAX_PLATFORMS="cpu")
  command = [sys.executable, "-m", "simsam_jax.evaluate",
             "--config=configs/eval.py:phantom,runlocal", f"--workdir={workdir}",
             f"--config.data_dir={tmp_path / 'tfds'}", "--config.builder_config=small",
             "--config.checkpoint=random:tiny", "--config.k=2", "--config.methods=sam,simsam",
             "--config.num_figures=0", "--config.import_modules=gate_plugin",
             "--config.columns=" + plugins.DEFAULT_COLUMNS + ",gate"]
  first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
  try:
    lock_file = workdir / workdir_lib.LOCK_FILE
    for _ in range(3000):  # until the first run holds the workdir
      if lock_file.exists() and lock_file.read_text().strip():
        break
      assert first.poll() is None, first.communicate()[1][-3000:]
      time.sleep(0.1)
    holder = lock_file.read_text().strip()
    assert holder == str(first.pid)
    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert second.returncode != 0
    assert f"--workdir={workdir} is in use by another run (pid {first.pid})" in second.stderr
    assert "Traceback" not in second.stderr
    assert first.poll() is None  # still held at the gate
  finally:
    gate.touch()
    out, err = first.communicate(timeout=600)
  assert first.returncode == 0, err[-3000:]
  rows = _rows(workdir / "per_image.csv")
  keys = [(r["id"], r["method"]) for r in rows]
  assert len(keys) == len(set(keys)) == 2 * len(PHANTOM_IDS)
  assert {r["gate"] for r in rows} == {"1"}
  assert lock_file.read_text() == ""  # released, no stale pid


def test_interactive_finetune_and_demo_refuse_a_held_workdir(tmp_path):
  from simsam_jax import demo, interactive
  spec = importlib.util.spec_from_file_location("icfg", REPO / "configs" / "interactive.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("phantom,runlocal")
  config.data_dir = str(tmp_path / "tfds")
  workdir = tmp_path / "w"
  busy = f"--workdir={workdir} is in use by another run (pid {os.getpid()})"
  with workdir_lib.lock(str(workdir)):
    with pytest.raises(ev.EvaluationError, match=busy.replace("(", r"\(").replace(")", r"\)")):
      interactive.run(config, str(workdir), progress=False)
    with pytest.raises(ev.EvaluationError, match="is in use by another run"):
      demo.run(demo.demo_config(), str(workdir), progress=False)
    done = subprocess.run(
        [sys.executable, "-m", "simsam_jax.finetune",
         "--config=configs/finetune.py:busi,runlocal", f"--workdir={workdir}",
         f"--config.data_dir={tmp_path / 'tfds'}"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
        timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    assert busy in done.stderr and "Traceback" not in done.stderr
  assert sorted(p.name for p in workdir.iterdir()) == [workdir_lib.LOCK_FILE]
  assert not (tmp_path / "tfds").exists()
