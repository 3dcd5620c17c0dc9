"""SAM-FT (simsam_jax.finetune / simsam_jax.training) on a generated BUSI tree.

One small training run (random `tiny` weights, S = 160, 3 epochs, batch 2)
is shared by most tests; the kill-and-resume and 4-device checks run
`python -m simsam_jax.finetune` / a script in subprocesses.
"""

import csv
import importlib.util
import json
import math
import os
import re
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from ml_collections import ConfigDict

import data_fixtures
import kill_resume
import torch_reference as tr
from simsam_jax import evaluate as ev
from simsam_jax.checkpoint import key_tables
from simsam_jax.checkpoint import load_model, read_sidecar, save_checkpoint
from simsam_jax.data import splitting
from simsam_jax.modeling import build_sam, get_preset
from simsam_jax.training import data as train_data
from simsam_jax.training import losses, trainer
from simsam_jax.training.trainer import TrainingError, finetune

REPO = pathlib.Path(__file__).resolve().parents[1]
# paper437 splits: train = 5 cases, validation = benign_211 and benign_356;
# test = malignant_1. The default split scheme (paper_81_9_10) moves
# benign_356 into train (6 cases, 3 steps of 2); with 80_10_10 the train split
# is 5 cases (3 steps of 2, the last padded).
CASES = {("malignant", 1): 0, ("malignant", 2): 1, ("malignant", 7): 0,
         ("benign", 211): 0, ("benign", 300): 1, ("benign", 212): 0, ("benign", 356): 1}
MOVED = "benign_356"
EPOCHS = 3
LEARNING_RATE = 1e-3  # large enough for a visible loss drop in 3 epochs


def _load_config_module(name):
  spec = importlib.util.spec_from_file_location("cfg_" + name.replace(".", "_"),
                                                REPO / "configs" / name)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _config(paths, **overrides):
  config = _load_config_module("finetune.py").get_config("busi,runlocal")
  config.data_dir = paths["data_dir"]
  config.manual_dir = paths["manual_dir"]
  config.epochs = EPOCHS
  config.learning_rate = LEARNING_RATE
  config.cache_dir = paths["cache_dir"]
  for k, v in overrides.items():
    setattr(config, k, v)
  return config


def _env(**extra):
  """os.environ (with the run's XLA compilation cache, conftest.py) + PYTHONPATH."""
  env = dict(os.environ)
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
  env.update(extra)
  return env


def _pure(model):
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.split(model)[1]))


def _flat(tree):
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("busi_manual")
  data_fixtures.make_busi_tree(root, CASES)
  return {"manual_dir": str(root), "data_dir": str(tmp_path_factory.mktemp("tfds")),
          "cache_dir": str(tmp_path_factory.mktemp("embedding_cache"))}


@pytest.fixture(scope="module")
def run(dataset, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("ft") / "w")
  config = _config(dataset)
  history = finetune(config, workdir, progress=False)
  return workdir, config, history


# ----------------------------------------------------------------------------
# Losses against hand-computed values.
# ----------------------------------------------------------------------------


def test_dice_loss_by_hand():
  logits = jnp.array([[[0.0, 2.0], [-1.0, 3.0]]])
  target = jnp.array([[[1.0, 1.0], [0.0, 0.0]]])
  p = 1.0 / (1.0 + np.exp(-np.array([0.0, 2.0, -1.0, 3.0])))
  g = np.array([1.0, 1.0, 0.0, 0.0])
  expected = 1 - (2 * (p * g).sum() + 1e-5) / ((p ** 2).sum() + (g ** 2).sum() + 1e-5)
  np.testing.assert_allclose(losses.dice_loss(logits, target), [expected], rtol=1e-6)
  # Perfect, saturated prediction -> ~0; both empty -> 0 (eps / eps).
  big = 50.0 * (2 * target - 1)
  np.testing.assert_allclose(losses.dice_loss(big, target), [0.0], atol=1e-6)
  np.testing.assert_allclose(losses.dice_loss(jnp.full((1, 2, 2), -50.0), jnp.zeros((1, 2, 2))),
                             [0.0], atol=1e-6)


def test_iou_target_threshold_is_on_logits():
  # Logits 0.3 are "probability > 0.5" but not "> 0.5": the two readings differ.
  logits = jnp.array([[[0.3, 0.7], [0.3, -1.0]]])
  target = jnp.array([[[1.0, 1.0], [0.0, 0.0]]])
  # threshold 0.5 (published): pred {0.7} -> inter 1, union 2.
  np.testing.assert_allclose(losses.iou_of_logits(logits, target), [0.5])
  assert losses.DEFAULT_IOU_TARGET_THRESHOLD == 0.5
  # threshold 0: pred {0.3, 0.7, 0.3} -> inter 2, union 3.
  np.testing.assert_allclose(losses.iou_of_logits(logits, target, 0.0), [2 / 3], rtol=1e-6)
  # Both empty -> IoU 0 (no NaN).
  np.testing.assert_allclose(losses.iou_of_logits(-jnp.ones((1, 2, 2)), jnp.zeros((1, 2, 2))),
                             [0.0])
  mse = losses.iou_prediction_loss(jnp.array([0.9]), logits, target)
  np.testing.assert_allclose(mse, [(0.9 - 0.5) ** 2], rtol=1e-6)


def test_total_loss_weights_and_gradient():
  logits = jnp.array([[[0.3, 0.7], [0.3, -1.0]], [[2.0, -2.0], [1.0, 0.0]]])
  target = jnp.array([[[1.0, 1.0], [0.0, 0.0]], [[1.0, 0.0], [1.0, 1.0]]])
  iou_pred = jnp.array([0.9, 0.2])
  total, parts = losses.sam_ft_loss(logits, iou_pred, target)
  per_sample = parts["dice"] + parts["iou"]
  np.testing.assert_allclose(total, per_sample.mean(), rtol=1e-6)
  weighted, _ = losses.sam_ft_loss(logits, iou_pred, target, weights=jnp.array([1.0, 0.0]))
  np.testing.assert_allclose(weighted, per_sample[0], rtol=1e-6)
  # The IoU target is a constant: the IoU term's gradient w.r.t. logits is 0.
  grad = jax.grad(lambda x: losses.iou_prediction_loss(iou_pred, x, target).sum())(logits)
  assert not np.any(np.asarray(grad))


# ----------------------------------------------------------------------------
# Optimiser: the Hugging Face Trainer's rules and torch's AdamW as references.
# ----------------------------------------------------------------------------


def _dotted(keypath):
  return ".".join(str(trainer._key(k)) for k in keypath)


def _hf_decoder_to_ours(config):
  """HF SamModel, and its mask-decoder parameter names -> our dotted paths."""
  hf = tr.hf_sam(config)
  fields = {"hyper_last": 2, "iou_last": config.iou_head_depth - 1}
  names = {}
  for name, _ in hf.named_parameters():
    if name.startswith("mask_decoder."):
      template, _, match = key_tables.find_rule(key_tables.HUGGING_FACE, name)
      names[name] = key_tables.render_target(template, match, fields)
  return hf, names


def _decay_names_transformers_4_30(model):
  """transformers 4.30.2 `Trainer.create_optimizer`, transcribed.

  `get_parameter_names(model, ALL_LAYERNORM_LAYERS)` (parameters outside
  `nn.LayerNorm` modules) minus names containing "bias". In 4.30.2
  `SamLayerNorm` derived from `nn.Module`, not `nn.LayerNorm` (today it does).
  """
  from transformers.models.sam.modeling_sam import SamLayerNorm

  def names(module):
    out = []
    for child_name, child in module.named_children():
      if isinstance(child, torch.nn.LayerNorm) and not isinstance(child, SamLayerNorm):
        continue
      out += [f"{child_name}.{n}" for n in names(child)]
    return out + list(module._parameters)

  return {n for n in names(model) if "bias" not in n}


def test_weight_decay_mask_follows_the_hf_trainer():
  config = get_preset("tiny")
  model = build_sam(config, 0)
  hf, to_ours = _hf_decoder_to_ours(config)
  ours = {rule: {_dotted(p): bool(v) for p, v in jax.tree_util.tree_flatten_with_path(
      trainer.weight_decay_mask(model, rule))[0]} for rule in trainer.WEIGHT_DECAY_MASKS}
  assert set(ours["all"]) == set(to_ours.values())  # every decoder parameter, once
  references = {
      "transformers_4_30": _decay_names_transformers_4_30(hf),
      # The installed transformers' own rule (self is unused).
      "bias_and_norm": set(__import__("transformers").Trainer.get_decay_parameter_names(
          None, hf)),
  }
  for rule, decay_names in references.items():
    expected = {ours_path: hf_name in decay_names for hf_name, ours_path in to_ours.items()}
    assert ours[rule] == expected, rule
  assert all(ours["all"].values())
  # Not decayed: every bias and LayerNorm scale; the upscaling LayerNorm2d's
  # scale only under the 4.30.2 rule.
  no_decay = {k for k, v in ours["transformers_4_30"].items() if not v}
  assert {k for k in no_decay if not k.endswith(".bias")} == {
      f"mask_decoder.transformer.layers.{i}.norm{j}.scale"
      for i in range(config.decoder_depth) for j in (1, 2, 3, 4)} | {
      "mask_decoder.transformer.norm_final_attn.scale"}
  assert all(v is False for k, v in ours["transformers_4_30"].items() if k.endswith(".bias"))
  assert ours["bias_and_norm"]["mask_decoder.upscale_norm.scale"] is False
  assert ours["transformers_4_30"]["mask_decoder.upscale_norm.scale"] is True
  with pytest.raises(ValueError, match="unknown weight decay mask"):
    trainer.weight_decay_mask(model, "hf")


def _torch_reference_steps(params, decay, grads, lr, weight_decay, total_steps, max_norm):
  """torch AdamW + clip_grad_norm_ + LambdaLR linear decay (the HF Trainer loop)."""
  flat = {_dotted(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  tensors = {k: torch.tensor(v, requires_grad=True) for k, v in flat.items()}
  groups = [{"params": [t for k, t in tensors.items() if decay[k]],
             "weight_decay": weight_decay},
            {"params": [t for k, t in tensors.items() if not decay[k]], "weight_decay": 0.0}]
  opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)
  schedule = torch.optim.lr_scheduler.LambdaLR(
      opt, lambda step: max(0.0, (total_steps - step) / total_steps))
  for grad in grads:
    for p, g in jax.tree_util.tree_flatten_with_path(grad)[0]:
      tensors[_dotted(p)].grad = torch.tensor(np.asarray(g))
    torch.nn.utils.clip_grad_norm_(list(tensors.values()), max_norm)
    opt.step()
    schedule.step()
  return {k: t.detach().numpy() for k, t in tensors.items()}


def _some_decoder_leaves(tree):
  """A decayed and a not-decayed LayerNorm, a convolution and a token (fast)."""
  md = tree["mask_decoder"]
  return {"mask_decoder": {
      "transformer": {"norm_final_attn": md["transformer"]["norm_final_attn"]},
      "upscale_norm": md["upscale_norm"], "upscale_conv1": md["upscale_conv1"],
      "iou_token": md["iou_token"]}}


def test_optimizer_matches_torch_adamw_and_clips():
  model = build_sam(get_preset("tiny"), 0)
  params = _some_decoder_leaves(
      jax.tree.map(np.asarray, nnx.to_pure_dict(trainer.split_model(model)[1])))
  mask = _some_decoder_leaves(trainer.weight_decay_mask(model, "transformers_4_30"))
  rng = np.random.default_rng(3)
  # A huge step (clipped), a small one (norm < 1, untouched), a large one.
  grads = [jax.tree.map(lambda p, s=s: rng.normal(0.0, s, p.shape).astype(np.float32), params)
           for s in (100.0, 1e-3, 3.0)]
  norms = [float(np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in jax.tree.leaves(grad))))
           for grad in grads]
  assert norms[0] > 100 and norms[1] < 1 and norms[2] > 1
  config = ConfigDict(dict(learning_rate=1e-3, weight_decay=0.5, max_grad_norm=1.0))
  total = 4

  def run_optax(cfg, decay_mask):
    """Parameters after the steps, and the optimiser state after the first."""
    tx = trainer.make_optimizer(cfg, total, decay_mask)
    step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(
        *tx.update(g, s, p)))
    p, state = params, tx.init(params)
    states = []
    for g in grads:
      p, state = step(p, state, g)
      states.append(state)
    return {_dotted(k): np.asarray(v)
            for k, v in jax.tree_util.tree_flatten_with_path(p)[0]}, states[0]

  ours, first_state = run_optax(config, mask)
  # The first step's Adam moment is the gradient clipped to norm 1.0:
  # mu = (1 - b1) * g * 1.0 / |g|.
  mu = first_state[1][0].mu
  expected_mu = jax.tree.map(lambda g: 0.1 * g / norms[0], grads[0])
  for a, b in zip(jax.tree.leaves(mu), jax.tree.leaves(expected_mu)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-12)
  decay = {_dotted(p): bool(v) for p, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
  reference = _torch_reference_steps(params, decay, grads, 1e-3, 0.5, total, 1.0)
  for k in reference:
    np.testing.assert_allclose(ours[k], reference[k], rtol=0, atol=2e-6, err_msg=k)
  # Decisive: without clipping, or decaying everything, the result is far off.
  unclipped, _ = run_optax(ConfigDict(dict(config, max_grad_norm=0.0)), mask)
  assert max(np.abs(unclipped[k] - reference[k]).max() for k in reference) > 1e-4
  decay_all, _ = run_optax(config, None)
  key = "mask_decoder.transformer.norm_final_attn.scale"
  assert np.abs(decay_all[key] - reference[key]).max() > 1e-4


# ----------------------------------------------------------------------------
# Split schemes.
# ----------------------------------------------------------------------------


def test_paper_split_scheme_sizes_and_test_sets():
  for name in ("busi_paper437", "busi_full", "busi_normal", "cvc_clinicdb"):
    data = splitting.load_split_file(name)
    lists, n = data["splits"], data["num_ids"]
    moved = splitting.moved_to_train("paper_81_9_10", name)
    # Hugging Face datasets `train_test_split(test_size=0.1)` twice, as
    # src/corpora.py does: n_test = ceil(0.1 * n) of the set it splits.
    n_test = math.ceil(0.1 * n)
    n_val = math.ceil(0.1 * (n - n_test))
    assert len(lists["test"]) == n_test, name
    assert len(lists["validation"]) - len(moved) == n_val, name
    assert len(lists["train"]) + len(moved) == n - n_test - n_val, name
    assert set(moved) <= set(lists["validation"]) and len(set(moved)) == len(moved)
    regenerated = splitting.split_80_10_10(data["canonical_order"], data["seed"],
                                           scheme="paper_81_9_10")
    assert regenerated["test"] == lists["test"]
    assert set(regenerated["validation"]) == set(lists["validation"]) - set(moved)
  assert splitting.moved_to_train("paper_81_9_10", "busi_paper437") == [
      "malignant_104", "malignant_168", "benign_356", "benign_414"]
  assert splitting.moved_to_train("paper_81_9_10", "isic2016") == []
  assert splitting.moved_to_train("80_10_10", "busi_paper437") == []
  with pytest.raises(ValueError, match="unknown split scheme '81_9_10'"):
    splitting.moved_to_train("81_9_10", "busi_paper437")


def test_split_schemes_in_training(run, dataset, tmp_path):
  _, _, history = run  # default: paper_81_9_10
  committed = splitting.load_split_lists("busi_paper437")
  present = {f"{c}_{n}" for c, n in CASES}
  train_80 = sorted(i for i in committed["train"] if i in present)
  assert history["split_ids"] == {"train": sorted(train_80 + [MOVED]), "val": ["benign_211"]}
  other = finetune(_config(dataset, split_scheme="80_10_10", epochs=1), str(tmp_path / "w"),
                   progress=False)
  assert other["split_ids"] == {"train": train_80, "val": ["benign_211", MOVED]}
  assert other["total_steps"] == 3  # 5 cases, batch 2: the last batch padded
  assert other["cache_hits"] == {"train": True, "val": True}  # one cache for both schemes


# ----------------------------------------------------------------------------
# Training.
# ----------------------------------------------------------------------------


def test_loss_falls_and_outputs(run):
  workdir, config, history = run
  assert history["total_steps"] == EPOCHS * 3
  assert len(history["step_losses"]) == EPOCHS * 3
  assert history["epoch_losses"][-1] < history["epoch_losses"][0]
  for record in history["validation"]:
    assert 0.0 <= record["dsc"] <= 1.0 and 0.0 <= record["nsd"] <= 1.0
  assert os.listdir(os.path.join(workdir, "checkpoints", "last"))
  assert os.listdir(os.path.join(workdir, "checkpoints", "best"))
  events = os.listdir(os.path.join(workdir, "tensorboard"))
  assert any(name.startswith("events.out.tfevents") for name in events)
  with open(os.path.join(workdir, "history.json")) as f:
    assert json.load(f)["step_losses"] == history["step_losses"]


def test_only_the_decoder_changes(run, dataset):
  workdir, config, _ = run
  before = _pure(build_sam(get_preset("tiny"), 0))
  after = _pure(load_model(os.path.join(workdir, "export", "last")))
  for part in ("image_encoder", "prompt_encoder"):
    a, b = _flat(before[part]), _flat(after[part])
    assert a.keys() == b.keys()
    for k in a:
      assert np.array_equal(a[k], b[k]), f"{part}{k} changed"
  # Every decoder leaf that receives a gradient on the first step changed.
  model = build_sam(get_preset("tiny"), 0)
  graphdef, decoder, frozen = trainer.split_model(model)
  split = train_data.prepare_split(trainer.load_examples(config, "train"),
                                   trainer.protocols.get_protocol("paper"), "busi", 160)
  assert train_data.load_or_encode(split, dataset["cache_dir"], _cache_fields("train"),
                                   None, None, 160)  # a cache hit: no encoder needed
  tx = trainer.make_optimizer(config, 9, trainer.weight_decay_mask(model, "transformers_4_30"))
  _, _, loss_fn = trainer.make_steps(graphdef, decoder, frozen, tx, 0.5, trainer.make_mesh(),
                                     config.loss)
  grads = jax.grad(loss_fn)(nnx.to_pure_dict(decoder), nnx.to_pure_dict(frozen),
                            split.embeddings, split.boxes, split.targets,
                            np.ones(len(split.ids), np.float32))
  g = _flat(grads["mask_decoder"])
  a, b = _flat(before["mask_decoder"]), _flat(after["mask_decoder"])
  with_gradient = [k for k in g if np.any(g[k] != 0)]
  assert len(with_gradient) > len(g) // 2
  for k in with_gradient:
    assert not np.array_equal(a[k], b[k]), f"mask_decoder{k} did not change"


def _cache_fields(split):
  return {"checkpoint": "random:tiny", "dataset": "busi", "builder_config": "paper437",
          "split": split, "protocol": "paper", "image_size": 160}


def test_second_run_reads_the_embedding_cache(run, dataset, tmp_path, monkeypatch):
  _, config, history = run
  assert history["cache_hits"] == {"train": False, "val": False}
  def no_encoder(*args, **kwargs):
    raise AssertionError("the image encoder ran despite the cache")
  monkeypatch.setattr(train_data, "encode_images", no_encoder)
  again = finetune(_config(dataset), str(tmp_path / "w2"), progress=False)
  assert again["cache_hits"] == {"train": True, "val": True}
  assert again["step_losses"] == history["step_losses"]
  assert again["validation"] == history["validation"]


def test_rerun_of_a_finished_run_does_nothing_new(run):
  workdir, config, history = run
  again = finetune(config, workdir, progress=False)
  assert again["step_losses"] == history["step_losses"]


def test_export_loads_and_evaluates(run, dataset, tmp_path):
  workdir, _, history = run
  for name in ("last", "best"):
    meta = read_sidecar(os.path.join(workdir, "export", name))
    assert meta["source"]["format"] == "sam_ft"
    assert meta["source"]["base_checkpoint"]["spec"] == "random:tiny"
    assert meta["preset"] == "tiny"
  assert read_sidecar(history["exports"]["last"])["source"]["epoch"] == EPOCHS
  assert read_sidecar(history["exports"]["best"])["source"]["epoch"] == history["best_epoch"]
  eval_config = _load_config_module("eval.py").get_config("busi,runlocal")
  eval_config.checkpoint = os.path.join(workdir, "export", "last")
  eval_config.data_dir, eval_config.manual_dir = dataset["data_dir"], dataset["manual_dir"]
  eval_config.methods, eval_config.k, eval_config.split = "sam,simsam", 3, "validation"
  eval_config.num_figures = 0
  results = ev.evaluate(eval_config, str(tmp_path / "eval"), progress=False)
  assert results["num_images"] == 2  # the built validation split (80_10_10)
  assert results["checkpoint"]["source"]["format"] == "sam_ft"
  # The evaluation's SAM on benign_211 (training's only validation image under
  # paper_81_9_10) equals the last validation DSC of training.
  with open(tmp_path / "eval" / "per_image.csv") as f:
    rows = {(r["id"], r["method"]): r for r in csv.DictReader(f)}
  assert history["split_ids"]["val"] == ["benign_211"]
  assert float(rows[("benign_211", "sam")]["dsc"]) == pytest.approx(
      history["validation"][-1]["dsc"], abs=1e-5)


# ----------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------


def test_bad_inputs(run, dataset, tmp_path):
  workdir, config, _ = run
  with pytest.raises(TrainingError, match="unknown dataset"):
    finetune(_config(dataset, dataset="mnist"), str(tmp_path / "a"), progress=False)
  with pytest.raises(TrainingError, match="protocol"):
    finetune(_config(dataset, protocol="fancy"), str(tmp_path / "b"), progress=False)
  with pytest.raises(TrainingError, match="batch_size"):
    finetune(_config(dataset, batch_size=0), str(tmp_path / "c"), progress=False)
  with pytest.raises(TrainingError, match="different config"):
    finetune(_config(dataset, learning_rate=2e-3), workdir, progress=False)
  assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")
  for field, value in (("loss", "dice"), ("split_scheme", "81_9_10"),
                       ("weight_decay_mask", "hf"), ("max_grad_norm", -1.0)):
    with pytest.raises(TrainingError, match=f"--config.{field}"):
      finetune(_config(dataset, **{field: value}), str(tmp_path / field), progress=False)
    assert not os.path.exists(tmp_path / field)
  with pytest.raises(TrainingError, match="split_scheme='paper_81_9_10'.*val_split"):
    finetune(_config(dataset, val_split="test"), str(tmp_path / "v"), progress=False)
  assert not os.path.exists(tmp_path / "v")
  # A checkpoint folder that now holds another architecture than the run's.
  other = str(tmp_path / "ckpt")
  save_checkpoint(other, nnx.split(build_sam(get_preset("tiny_wide"), 0))[1],
                  get_preset("tiny_wide"), {"format": "random"})
  moved = tmp_path / "w_arch"
  moved.mkdir()
  with open(os.path.join(workdir, "config.json")) as f:
    previous = json.load(f)
  previous["checkpoint"] = other
  (moved / "config.json").write_text(json.dumps(previous))
  (moved / "run.json").write_text(open(os.path.join(workdir, "run.json")).read())
  with pytest.raises(TrainingError, match="another architecture"):
    finetune(_config(dataset, checkpoint=other), str(moved), progress=False)
  assert not os.path.exists(moved / "checkpoints")


# ----------------------------------------------------------------------------
# Kill and resume; data parallel.
# ----------------------------------------------------------------------------


def _cli(dataset, workdir, *extra):
  return [sys.executable, "-m", "simsam_jax.finetune",
          "--config=configs/finetune.py:busi,runlocal",
          f"--workdir={workdir}", f"--config.data_dir={dataset['data_dir']}",
          f"--config.manual_dir={dataset['manual_dir']}", f"--config.epochs={EPOCHS}",
          f"--config.learning_rate={LEARNING_RATE}", f"--config.cache_dir={dataset['cache_dir']}",
          *extra]


@pytest.mark.parametrize("flag,field", [("--config.loss=dice", "--config.loss"),
                                        ("--config.split_scheme=81_9_10",
                                         "--config.split_scheme")])
def test_cli_refuses_unknown_option_names(dataset, tmp_path, flag, field):
  workdir = tmp_path / "w"
  done = subprocess.run(_cli(dataset, workdir, flag), cwd=REPO, env=_env(),
                        capture_output=True, text=True)
  assert done.returncode != 0
  assert field in done.stderr and "use one of" in done.stderr, done.stderr[-2000:]
  assert not workdir.exists()


def test_bfloat16_training_keeps_float32_master_weights(run, dataset, tmp_path):
  """--config.precision=bfloat16: bf16 compute, float32 parameters, optimiser
  state and loss; its own embedding cache; the float32 run's workdir refuses it."""
  workdir = str(tmp_path / "bf16")
  history = finetune(_config(dataset, precision="bfloat16", epochs=1), workdir,
                     progress=False)
  assert history["cache_hits"] == {"train": False, "val": False}  # not the float32 cache
  losses = np.asarray(history["step_losses"])
  assert losses.dtype == np.float64 and np.all(np.isfinite(losses))
  assert history["step_losses"] != run[2]["step_losses"][:len(losses)]
  exported = load_model(history["exports"]["last"])
  assert {x.dtype for x in jax.tree.leaves(nnx.state(exported))} == {np.dtype(np.float32)}
  sidecar = read_sidecar(history["exports"]["last"])
  assert "precision" not in sidecar["architecture"]  # a run option, not architecture
  assert sidecar["source"]["config"]["precision"] == "bfloat16"  # the run's provenance
  with pytest.raises(TrainingError, match="precision"):
    finetune(_config(dataset, precision="bfloat16"), run[0], progress=False)


def test_cli_refuses_unknown_precision(dataset, tmp_path):
  workdir = tmp_path / "w"
  done = subprocess.run(_cli(dataset, workdir, "--config.precision=float16"), cwd=REPO,
                        env=_env(), capture_output=True, text=True)
  assert done.returncode != 0
  assert "--config.precision" in done.stderr, done.stderr[-2000:]
  assert not workdir.exists()


def test_kill_and_resume_is_bit_identical(run, dataset, tmp_path):
  reference_dir, _, reference = run
  workdir = str(tmp_path / "killed")
  command = _cli(dataset, workdir, "--config.checkpoint_every_steps=1")
  killed_at = kill_resume.kill_after_checkpoint(command, workdir, 2, cwd=REPO,
                                                env=_env(), timeout=600)
  assert 2 <= killed_at < reference["total_steps"], "the run was not killed mid-training"
  assert not os.path.exists(os.path.join(workdir, "export"))
  done = subprocess.run(command, cwd=REPO, env=_env(),
                        capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  # the console: the progress bar and where files went; Orbax's INFO lines in logs/
  assert not re.search(r"^I\d{4} ", done.stdout + done.stderr, re.M), done.stderr[-2000:]
  assert "Library logs:" in done.stdout
  assert "orbax" in open(os.path.join(workdir, "logs", "finetune.log")).read().lower()
  with open(os.path.join(workdir, "history.json")) as f:
    resumed = json.load(f)
  assert resumed["step_losses"] == reference["step_losses"]
  for name in ("last", "best"):
    a = _flat(_pure(load_model(os.path.join(reference_dir, "export", name))))
    b = _flat(_pure(load_model(os.path.join(workdir, "export", name))))
    assert a.keys() == b.keys()
    for k in a:
      assert np.array_equal(a[k], b[k]), f"{name}{k} differs after resume"


FOUR_DEVICES = textwrap.dedent("""
    import json, sys
    import jax
    from simsam_jax.training.trainer import TrainingError, finetune
    sys.path.insert(0, {tests!r})
    import test_finetune as t
    dataset = json.loads({dataset!r})
    assert jax.device_count() == 4, jax.devices()
    try:
      finetune(t._config(dataset), {workdir!r} + "_bad", progress=False)
      print("NO_ERROR")
    except TrainingError as e:
      print("BATCH_ERROR", e)
    history = finetune(t._config(dataset, batch_size=4, epochs=1), {workdir!r},
                       progress=False)
    print("LOSSES", json.dumps(history["step_losses"]))
""")


def test_four_devices_match_one_device(run, dataset, tmp_path):
  one = finetune(_config(dataset, batch_size=4, epochs=1), str(tmp_path / "one"),
                 progress=False)
  script = FOUR_DEVICES.format(tests=str(REPO / "tests"), dataset=json.dumps(dataset),
                               workdir=str(tmp_path / "four"))
  done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                        text=True, env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4",
                                            JAX_PLATFORMS="cpu"))
  assert done.returncode == 0, done.stderr[-3000:]
  lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in done.stdout.splitlines()
           if line.startswith(("LOSSES", "BATCH_ERROR", "NO_ERROR"))}
  assert "not divisible by the 4 devices" in lines["BATCH_ERROR"]
  four = json.loads(lines["LOSSES"])
  assert len(four) == len(one["step_losses"]) == 2
  np.testing.assert_allclose(four, one["step_losses"], atol=1e-5, rtol=0)
