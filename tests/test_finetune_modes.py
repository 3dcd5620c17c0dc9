"""Training modes `lora` and `full`, prompt schemes, the grain pipeline, processes.

Small runs on the built `phantom/small` dataset (4 train images, 64-96 px)
with random `tiny` weights (S = 160): a few steps each, with a global batch
of the 4 train images, so that every step sees the same data and the loss
must fall.
"""

import importlib.util
import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import kill_resume

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from simsam_jax.checkpoint import load_model
from simsam_jax.data import loading
from simsam_jax.simsam import pipeline as simsam_pipeline
from simsam_jax import processing
from simsam_jax.training import data as train_data
from simsam_jax.training import image_trainer, lora, pipeline, prompts, trainer
from simsam_jax.training.trainer import TrainingError, finetune
from simsam_jax.workdir import load_sam_model

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 4


def _finetune_config():
  spec = importlib.util.spec_from_file_location("cfg_finetune_modes",
                                                REPO / "configs" / "finetune.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("phantom,runlocal")


def _config(data_dir, **overrides):
  c = _finetune_config()
  c.builder_config = "small"
  c.data_dir = data_dir
  c.protocol = "native"
  c.split_scheme = "80_10_10"
  c.learning_rate = 3e-3
  c.batch_size = 4  # the whole train split of phantom/small: every step sees the same images
  c.steps = STEPS
  c.loss = "dice_per_image"
  c.lora_rank = 4
  c.data_threads = 1
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def _flat(tree):
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _weights(model):
  return _flat(nnx.to_pure_dict(nnx.state(model)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds_phantom"))
  loading.prepare_builder("phantom", path, config="small")
  return path


# Both runs use interactive prompts with one click round (lora: SAM's
# box-or-point starts, full: box starts); the kill / resume and two-process
# tests compare against them.
RUN_PROMPTS = {"lora": dict(prompt="interactive", num_rounds=1, first_prompt="box_or_point"),
               "full": dict(prompt="interactive", num_rounds=1, first_prompt="box")}


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
  out = {}
  for mode, prompt in RUN_PROMPTS.items():
    workdir = str(tmp_path_factory.mktemp(mode) / "w")
    config = _config(data_dir, mode=mode, lora_export="both", checkpoint_every_steps=2,
                     **prompt)
    out[mode] = (workdir, config, finetune(config, workdir, progress=False))
  return out


# ----------------------------------------------------------------------------
# Pieces.
# ----------------------------------------------------------------------------


def test_low_res_frame_matches_the_jax_version():
  rng = np.random.default_rng(3)
  for h, w in ((70, 93), (96, 64), (160, 160)):
    mask = rng.random((h, w)) > 0.6
    info = processing.ImageInfo((h, w), processing.preprocess_shape(h, w, 160), 160)
    want = np.asarray(simsam_pipeline.binary_in_low_res_frame(jnp.asarray(mask), info, 40))
    np.testing.assert_array_equal(pipeline.low_res_frame(mask, info), want)


def test_box_jitter_is_the_published_rule():
  # get_bounding_box(add_perturbation=True), transcribed: each side moves out
  # by np.random.randint(0, 20), clipped to [0, W] and [0, H].
  def published(box, h, w, d):
    x0, y0, x1, y1 = box
    return [max(0, x0 - d[0]), max(0, y0 - d[1]), min(w, x1 + d[2]), min(h, y1 + d[3])]

  box = np.array([5, 30, 60, 70], np.float32)
  for seed in range(20):
    d = np.random.default_rng(seed).integers(0, 20, size=4)
    got = pipeline.jitter_box(box, (80, 64), np.random.default_rng(seed))
    assert got.tolist() == published(box.tolist(), 80, 64, d)
    assert np.all(d < 20)


def test_augmentations_move_mask_with_image():
  image = np.zeros((50, 60, 3), np.uint8)
  mask = np.zeros((50, 60), bool)
  mask[10:20, 5:25] = True
  image[mask] = 200
  config = pipeline.AugmentConfig(hflip=True, vflip=True, rotate_degrees=15, scale=0.1)
  for seed in range(6):
    img, m = pipeline.augment(image, mask, config, np.random.default_rng(seed))
    bright = img[..., 0] > 100
    # The bright square and the mask stay aligned (bilinear vs nearest edges).
    assert (bright ^ m).sum() <= 0.15 * m.sum()
    assert 0.7 * mask.sum() < m.sum() < 1.4 * mask.sum()


def test_error_click_reuses_error_regions():
  target = np.zeros((12, 12), bool)
  target[2:8, 2:8] = True
  prediction = np.zeros((12, 12), bool)
  prediction[2:8, 2:5] = True  # misses columns 5-7: a false negative
  valid = np.ones((12, 12), bool)
  for seed in range(10):
    xy, label = prompts.error_click(jnp.asarray(prediction), jnp.asarray(target),
                                    jnp.asarray(valid), jax.random.PRNGKey(seed))
    x, y = int(xy[0]), int(xy[1])
    assert int(label) == 1 and target[y, x] and not prediction[y, x]
  prediction = target.copy()
  prediction[9:11, 9:11] = True  # only a false positive
  xy, label = prompts.error_click(jnp.asarray(prediction), jnp.asarray(target),
                                  jnp.asarray(valid), jax.random.PRNGKey(0))
  assert int(label) == 0 and prediction[int(xy[1]), int(xy[0])]
  xy, label = prompts.error_click(jnp.asarray(target), jnp.asarray(target),
                                  jnp.asarray(valid), jax.random.PRNGKey(0))
  assert int(label) == -1 and xy.tolist() == [-1, -1]


def test_lora_wraps_with_nnx_lora_and_merges():
  model, _ = load_sam_model("random:tiny")
  base = _weights(model)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 160, 160, 3))
  before = model.encode_image(x)
  names = lora.add_lora(model, 4, 8.0, rngs=nnx.Rngs(1))
  assert names.count("qkv") == 3 and names.count("proj") == 3
  attn = model.image_encoder.blocks[0].attn
  assert isinstance(attn.qkv, nnx.LoRA) and isinstance(attn.qkv.lora_a, nnx.LoRAParam)
  np.testing.assert_allclose(model.encode_image(x), before, atol=1e-6)  # B starts at 0
  # Non-zero adapters: merged weights reproduce the wrapped model.
  attn.qkv.lora_b[...] = jax.random.normal(jax.random.PRNGKey(2), attn.qkv.lora_b.shape)
  wrapped = model.encode_image(x)
  merged = lora.merge_lora(nnx.to_pure_dict(nnx.state(model)), 4, 8.0)
  plain, _ = load_sam_model("random:tiny")
  state = nnx.state(plain)
  nnx.replace_by_pure_dict(state, merged)
  nnx.update(plain, state)
  np.testing.assert_allclose(plain.encode_image(x), wrapped, atol=1e-4)
  changed = [k for k, v in _weights(plain).items() if not np.array_equal(v, base[k])]
  assert changed == ["['image_encoder']['blocks'][0]['attn']['qkv']['kernel']"]
  with pytest.raises(ValueError, match="lora_rank"):
    lora.check_rank(plain, 25)
  with pytest.raises(ValueError, match="lora_rank"):
    lora.check_rank(plain, 0)


# ----------------------------------------------------------------------------
# Runs.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_loss_falls(runs, mode):
  losses = runs[mode][2]["step_losses"]
  assert len(losses) == STEPS and all(np.isfinite(losses))
  assert np.mean(losses[-2:]) < np.mean(losses[:2]), losses


def test_lora_changes_only_the_adapters(runs):
  workdir, config, history = runs["lora"]
  base = _weights(load_sam_model(config.checkpoint)[0])
  merged = _weights(load_model(os.path.join(workdir, "export", "last")))
  assert merged.keys() == base.keys()
  changed = {k for k in base if not np.array_equal(base[k], merged[k])}
  assert changed, "nothing trained"
  assert all(k.endswith("['kernel']") and ("['qkv']" in k or "['proj']" in k)
             and k.startswith("['image_encoder']") for k in changed), changed
  # The adapter export applied to its base equals the merged export.
  applied = _weights(image_trainer.load_with_adapter(os.path.join(workdir, "export", "adapter"),
                                                     config.checkpoint))
  for k in base:
    np.testing.assert_allclose(applied[k], merged[k], atol=1e-6, err_msg=k)
  # Trainable state: the adapters only; optimiser state a small fraction of full mode's.
  full = runs["full"][2]
  assert history["trainable_parameters"] < 0.1 * full["trainable_parameters"]
  assert history["optimizer_state_elements"] < 0.5 * full["optimizer_state_elements"]


def test_full_changes_every_part(runs):
  workdir, config, _ = runs["full"]
  base = _weights(load_sam_model(config.checkpoint)[0])
  trained = _weights(load_model(os.path.join(workdir, "export", "last")))
  for part in ("image_encoder", "prompt_encoder", "mask_decoder"):
    assert any(not np.array_equal(base[k], trained[k]) for k in base
               if k.startswith(f"['{part}']")), part


def test_adapter_refuses_another_base(runs):
  workdir, _, _ = runs["lora"]
  with pytest.raises(TrainingError, match="trained on base weights"):
    image_trainer.load_with_adapter(os.path.join(workdir, "export", "adapter"),
                                    "random:tiny:7")


def _cli(config, workdir):
  """The `finetune` command line of `config` (the fields `_config` sets)."""
  fields = ("builder_config", "data_dir", "protocol", "split_scheme", "learning_rate",
            "batch_size", "steps", "loss", "lora_rank", "data_threads", "mode", "prompt",
            "num_rounds", "first_prompt", "lora_export")
  return [sys.executable, "-m", "simsam_jax.finetune",
          "--config=configs/finetune.py:phantom,runlocal", f"--workdir={workdir}",
          "--config.checkpoint_every_steps=1",
          *[f"--config.{f}={config[f]}" for f in fields]]


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_sigkill_and_resume_is_bit_identical(runs, tmp_path, mode):
  """A real SIGKILL mid-run; the resumed run equals the uninterrupted one bit for bit."""
  reference_dir, config, reference = runs[mode]
  workdir = str(tmp_path / "killed")
  # os.environ carries the run's XLA compilation cache (conftest.py).
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu")
  killed_at = kill_resume.kill_after_checkpoint(_cli(config, workdir), workdir, 2, cwd=REPO,
                                                env=env, timeout=600)
  assert 2 <= killed_at < STEPS, f"the run was not killed mid-training ({killed_at})"
  assert not os.path.exists(os.path.join(workdir, "export"))
  resumed = finetune(config, workdir, progress=False)
  assert resumed["step_losses"] == reference["step_losses"]
  assert resumed["validation"] == reference["validation"]
  for name in ("last", "best"):
    a = _weights(load_model(os.path.join(reference_dir, "export", name)))
    b = _weights(load_model(os.path.join(workdir, "export", name)))
    assert a.keys() == b.keys()
    for k in a:
      assert np.array_equal(a[k], b[k]), f"{name}{k} differs after resume"


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_validation_each_epoch_and_best_export(runs, data_dir, mode):
  """One validation per epoch (one step = one epoch here); export/best is the
  best epoch's model: re-validating it gives the recorded DSC."""
  workdir, config, history = runs[mode]
  records = history["validation"]
  assert [r["epoch"] for r in records] == list(range(1, STEPS + 1))
  dscs = [r["dsc"] for r in records]
  assert all(np.isfinite(dscs)) and len(set(dscs)) > 1, dscs
  assert history["best_epoch"] == 1 + int(np.argmax(dscs))
  np.testing.assert_allclose([r["train_loss"] for r in records], history["step_losses"])
  best = load_model(os.path.join(workdir, "export", "best"))
  graphdef, state = nnx.split(best)
  predict, encode = image_trainer.make_predict(graphdef, state, nnx.State({}))
  val = image_trainer.load_validation(config, best.config.image_size, "sam")
  params = nnx.to_pure_dict(state)
  val.embeddings = train_data.encode_images(encode, (params, {}), val.images,
                                            best.config.image_size)
  scores = trainer.validate(predict, params, {}, val, float(config.nsd_tolerance))
  np.testing.assert_allclose(scores["dsc"], max(dscs), atol=1e-6)


@pytest.mark.parametrize("overrides,match", [
    (dict(mode="adapter"), "--config.mode='adapter': unknown mode"),
    (dict(mode="full", prompt="points"), "--config.prompt='points': unknown prompt scheme"),
    (dict(mode="decoder", prompt="interactive"), "decoder mode trains on cached"),
    (dict(mode="lora", lora_rank=0), "--config.lora_rank=0"),
    (dict(mode="lora", lora_rank=1000), "--config.lora_rank=1000"),
    (dict(mode="full", prompt="interactive", first_prompt="points"),
     "--config.first_prompt='points': unknown first prompt"),
    (dict(mode="full", prompt="box", first_prompt="point"),
     "--config.first_prompt='point' needs --config.prompt=interactive"),
    (dict(mode="full", attention_query_rows=-1), "--config.attention_query_rows=-1"),
])
def test_bad_input_before_any_output(data_dir, tmp_path, overrides, match):
  workdir = tmp_path / "w"
  with pytest.raises(TrainingError, match=match):
    finetune(_config(data_dir, **overrides), str(workdir), progress=False)
  assert not workdir.exists() or not any(workdir.iterdir())


TWO_PROCESSES = textwrap.dedent("""
    import json, sys
    import jax
    sys.path.insert(0, {tests!r})
    import test_finetune_modes as t
    from simsam_jax.training.trainer import TrainingError, finetune
    config = t._config({data_dir!r}, mode={mode!r}, **t.RUN_PROMPTS[{mode!r}],
                       distributed="localhost:{port},2,{index}", batch_size=3)
    try:
      finetune(config, {workdir!r} + "_bad", progress=False)
      print("NO_ERROR")
    except TrainingError as e:
      print("BATCH_ERROR", e)
    config.batch_size = 4
    history = finetune(config, {workdir!r}, progress=False)
    print("LOSSES", json.dumps(history["step_losses"]))
""")


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(runs, data_dir, tmp_path):
  """Two JAX processes (one CPU device each) train as one process does.

  Run in `lora` mode, whose step holds every part of the multi-process path:
  the image encoder in the graph, per-example random first prompts (box or
  point, keys folded by global example index), a click round, gradients
  reduced over processes and an optimiser over part of the state. `full`
  mode differs only in which parameters are trainable (the in-process runs
  test that); its step is the slowest program of the suite to compile
  (~3 min per process on two busy cores), so it is not compiled twice more.
  """
  mode = "lora"
  one = runs[mode][2]  # the same global batch and prompts in one process
  port = _free_port()
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen(
      [sys.executable, "-c", TWO_PROCESSES.format(tests=str(REPO / "tests"), data_dir=data_dir,
                                                  mode=mode, port=port, index=i,
                                                  workdir=str(tmp_path / "two"))],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  for out, _ in outs:
    lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.splitlines()
             if line.startswith(("LOSSES", "BATCH_ERROR", "NO_ERROR"))}
    assert "not divisible by the 2 devices" in lines["BATCH_ERROR"]
    np.testing.assert_allclose(json.loads(lines["LOSSES"]), one["step_losses"], atol=1e-5,
                               rtol=0)


def test_first_prompt_point_is_in_the_mask_and_both_starts_occur():
  b, m, s = 64, 40, 160
  rng = np.random.default_rng(5)
  targets = np.zeros((b, m, m), np.float32)
  for i in range(b):  # one random rectangle per example, a few one-pixel ones
    y0, x0 = rng.integers(0, m - 8, size=2)
    h, w = (1, 1) if i % 16 == 0 else rng.integers(2, 8, size=2)
    targets[i, y0:y0 + h, x0:x0 + w] = 1.0
  targets[-1] = 0.0  # an empty mask: no point, the box starts
  valid = np.ones_like(targets)
  valid[:, :, 36:] = 0.0
  targets *= valid
  key = jax.random.PRNGKey(11)
  first = jax.jit(prompts.first_points, static_argnums=(3, 4))
  points, labels, use_box = first(jnp.asarray(targets), jnp.asarray(valid), key, s,
                                  "box_or_point")
  again = first(jnp.asarray(targets), jnp.asarray(valid), key, s, "box_or_point")
  for x, y in zip((points, labels, use_box), again):
    np.testing.assert_array_equal(x, y)  # deterministic given the key
  use_box, labels = np.asarray(use_box), np.asarray(labels)
  assert 0.25 * b < use_box.sum() < 0.75 * b, use_box.sum()  # both starts, about 1/2
  assert use_box[-1] and labels[-1] == -1
  np.testing.assert_array_equal(labels, np.where(use_box, -1, 1))
  # Back in the low-res frame (centre to centre), every point is a foreground pixel.
  xy = np.rint((np.asarray(points) + 0.5) * m / s - 0.5).astype(int)
  for i in np.flatnonzero(~use_box):
    assert targets[i, xy[i, 1], xy[i, 0]] == 1.0, i
  # "point": every example with a foreground starts from a point; "box": none does.
  _, labels_p, box_p = first(jnp.asarray(targets), jnp.asarray(valid), key, s, "point")
  assert not np.asarray(box_p)[:-1].any() and (np.asarray(labels_p)[:-1] == 1).all()
  assert np.asarray(first(jnp.asarray(targets), jnp.asarray(valid), key, s, "box")[2]).all()
  # Uniform over the foreground (SAM), not border-distance weighted: a 1 x 8 bar
  # (every pixel at distance 1) and a 7 x 7 square's ring are both hit.
  square = np.zeros((1, m, m), np.float32)
  square[0, 5:12, 5:12] = 1.0
  # 300 draws: one image repeated, its 300 rows draw with keys fold_in(key, row).
  p, _, _ = first(jnp.asarray(np.repeat(square, 300, 0)), jnp.ones((300, m, m)), key, s,
                  "point")
  hits = np.zeros((m, m), int)
  for x, y in np.rint((np.asarray(p) + 0.5) * m / s - 0.5).astype(int):
    hits[y, x] += 1
  assert hits.sum() == hits[5:12, 5:12].sum()
  ring = hits[5:12, 5:12].copy()
  ring[1:-1, 1:-1] = 0
  assert 0.5 * 24 / 49 < ring.sum() / 300 < 1.5 * 24 / 49  # 24 of the 49 pixels


def test_first_prompt_layouts_per_example():
  """Which prompts each example's decodes get, round by round (recorded while tracing)."""
  b, m, s = 8, 16, 64
  targets = np.zeros((b, m, m), np.float32)
  targets[:, 4:10, 4:10] = 1.0
  calls = []

  def decode(emb, points, labels, boxes, mask):
    calls.append((None if points is None else labels.shape, boxes is not None,
                  mask is not None))
    # Box layouts predict nothing, point layouts everything: the rows tell.
    fill = -1.0 if boxes is not None else 1.0
    return jnp.full((b, m, m), fill), jnp.zeros((b,))

  def loss(low, iou, t, w):
    return jnp.mean(low)

  def run(key, first_prompt):
    return prompts.interactive_losses(decode, loss, None, jnp.zeros((b, 4)),
                                      jnp.asarray(targets), jnp.ones((b, m, m)),
                                      jnp.ones((b,)), key, 2, s, first_prompt)[1]

  key = jax.random.PRNGKey(3)
  last = jax.jit(run, static_argnums=1)(key, "box_or_point")
  _, _, use_box = jax.jit(prompts.first_points, static_argnums=(3, 4))(
      jnp.asarray(targets), jnp.ones((b, m, m)), key, s, "box_or_point")
  use_box = np.asarray(use_box)
  assert 0 < use_box.sum() < b
  # Round 0: point + pad (no box), then the box alone; rounds 1, 2: point +
  # clicks (3 slots), box + clicks (2 slots); dense prompts from round 1 on.
  assert calls == [((b, 1), False, False), (None, True, False),
                   ((b, 3), False, True), ((b, 2), True, True),
                   ((b, 3), False, True), ((b, 2), True, True)]
  # Each example keeps its own layout's prediction.
  np.testing.assert_array_equal(np.asarray(last)[:, 0, 0], np.where(use_box, -1.0, 1.0))
  # "box" keeps the layout it always had: the box, then box + clicks, no extra slot.
  calls.clear()
  jax.jit(run, static_argnums=1)(key, "box")
  assert calls == [(None, True, False), ((b, 2), True, True), ((b, 2), True, True)]


def test_chunked_attention_equals_attention():
  """Query-row chunks (training's global attention) give `Attention`'s output and gradients."""
  from simsam_jax.modeling.image_encoder import Attention
  from simsam_jax.modeling.policy import Policy
  attn = Attention(24, 3, 8, rngs=nnx.Rngs(0), policy=Policy())
  # Decisive tables: large relative-position terms shape the attention.
  attn.rel_pos_h[...] = jax.random.normal(jax.random.PRNGKey(1), attn.rel_pos_h.shape)
  attn.rel_pos_w[...] = jax.random.normal(jax.random.PRNGKey(2), attn.rel_pos_w.shape)
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 8, 8, 24))
  graphdef, state = nnx.split(attn)

  def loss(state, x, rows):
    module = nnx.merge(graphdef, state)
    if rows:
      module.__class__ = image_trainer.ChunkedAttention
      module.query_rows = rows
    out = module(x)
    return jnp.sum(out * jnp.cos(out)), out

  grad = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True), static_argnums=2)
  (g_state, g_x), want = grad(state, x, 0)
  for rows in (2, 4):
    (c_state, c_x), got = grad(state, x, rows)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(c_x, g_x, atol=1e-4, rtol=1e-4)
    for a, b in zip(jax.tree.leaves(c_state), jax.tree.leaves(g_state)):
      np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
  assert float(jnp.std(want)) > 0.1


def _encoder_memory(remat, rows):
  """XLA's compiled memory of the encoder's gradient, prepared as the trainer does.

  A small ViT (grid 16, width 64, a windowed then a global block; batch 2);
  `prepare_model` places the remat and the chunked attention exactly as in a
  `full` run. Only the encoder is compiled (the decoder and optimiser do not
  change with these switches). Returns (argument bytes, temporary bytes).
  """
  import dataclasses
  from ml_collections import ConfigDict
  from simsam_jax.modeling import build_sam, get_preset
  tiny = get_preset("tiny")
  arch = dataclasses.replace(tiny, image_size=256, encoder=dataclasses.replace(
      tiny.encoder, dim=64, depth=2, num_heads=4, mlp_dim=256, window_size=4,
      global_attn_indexes=(1,)))
  model = build_sam(arch, 0)
  image_trainer.prepare_model(model, ConfigDict(dict(mode="full", remat=remat,
                                                     attention_query_rows=rows)))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params, pixels):
    out = nnx.merge(graphdef, params, rest).encode_image(pixels)
    return jnp.sum(out * out)

  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  pixels = jax.ShapeDtypeStruct((2, 256, 256, 3), jnp.float32)
  stats = jax.jit(jax.grad(loss)).lower(abstract, pixels).compile().memory_analysis()
  return stats.argument_size_in_bytes, stats.temp_size_in_bytes


def test_compiled_memory_remat_and_query_chunks():
  """Consistency of XLA's compiled memory (nothing runs; ViT-B: benchmarks/RESULTS.md).

  remat and chunks change no argument; chunking the global block's queries
  (4 chunks of 4 rows: its (B, heads, T, T) tensors shrink 4x) cuts the
  temporaries. XLA's CPU compiler gives block remat no saving (within 25 %
  either way here; ViT-B: chunks, not remat, brought the step under 16 GB).
  """
  plain = _encoder_memory(False, 0)
  remat = _encoder_memory(True, 0)
  chunked = _encoder_memory(True, 4)
  assert plain[0] == remat[0] == chunked[0]
  assert 0.75 * plain[1] < remat[1] < 1.25 * plain[1], (plain, remat)
  assert chunked[1] < 0.75 * remat[1], (remat, chunked)


def test_remat_defaults_per_mode(runs):
  """`remat` None (the config's default): `full` rematerialises its encoder
  blocks, `lora` does not; an explicit value wins; the workdir records the
  resolved value (so resuming compares like with like)."""
  from ml_collections import ConfigDict
  assert _finetune_config().remat is None
  for mode, want in (("full", True), ("lora", False)):
    assert image_trainer.remat_enabled(ConfigDict(dict(mode=mode, remat=None))) is want
    assert image_trainer.remat_enabled(ConfigDict(dict(mode=mode, remat=not want))) is (not want)
    with open(os.path.join(runs[mode][0], "config.json")) as f:
      assert json.load(f)["remat"] is want
