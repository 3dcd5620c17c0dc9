r"""SAM-FT training loop: the mask decoder fine-tuned on GT boxes (SPEC §2).

The image encoder and the prompt encoder are frozen. Every image is encoded
once (`simsam_jax.training.data`, cached on disk); each step runs only the
prompt encoder and the mask decoder on a batch of cached embeddings with the
GT box as the only prompt (single-mask output) and updates the decoder.
Loss: `simsam_jax.training.losses` (`config.loss`).

Optimiser (`make_optimizer`), as the published `scripts/train.py` gets it
from the Hugging Face `Trainer` defaults of transformers 4.30.2 (the version
its requirements.txt pins), built from optax parts:
`optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.adamw(...))`
with gradient-norm clipping at 1.0, AdamW b1 0.9, b2 0.999, eps 1e-8, weight
decay 0.01, lr decaying linearly from `learning_rate` to 0 over all steps
with no warm-up, and weight decay masked by `weight_decay_mask`:

  "transformers_4_30" (published): no decay on any `bias` and on the
      scale/bias of the two-way transformer's LayerNorms (`nn.LayerNorm` in
      HF); the upscaling LayerNorm2d (`mask_decoder.upscale_norm`) keeps decay
      on its scale, because 4.30.2's `SamLayerNorm` was a plain `nn.Module`
      that `Trainer.get_decay_parameter_names` did not recognise.
  "bias_and_norm": no decay on biases and on every LayerNorm (what current
      transformers' `Trainer` does, its SamLayerNorm being an nn.LayerNorm).
  "all": decay on every parameter.

Precision (`config.precision`, `simsam_jax.modeling.policy`): in "bfloat16"
the frozen encoder (embedding cache, keyed by the precision) and every
training step compute matmuls and convolutions in bfloat16, while the
trained parameters (master weights), their gradients and the optimiser
state stay float32, as do the logits, the loss and the validation metrics.

Deliberate deviations from the PyTorch optimisers, all far below float32
noise at lr 1e-5: optax's AdamW adds eps to the bias-corrected sqrt(v)
(transformers' AdamW adds it before the correction) and applies the decay to
the parameters before the Adam step rather than after; optax clips by
`max_norm / norm` where torch uses `max_norm / (norm + 1e-6)`.

Splits (`config.split_scheme`): "paper_81_9_10" trains on the committed
train split plus the few validation ids that the published 81/9/10
proportions put into train (`simsam_jax.data.splitting.moved_to_train`);
"80_10_10" uses the committed lists as they are. The test sets are the same.
The ids move after the embedding cache is read, so both schemes share it.

Workdir layout:

  config.json           the run's config (a different results-defining config
                        is refused), run.json: the model architecture.
  embedding_cache/      cached image embeddings (unless `config.cache_dir`).
  checkpoints/last/     Orbax CheckpointManager, the latest train state.
  checkpoints/best/     Orbax CheckpointManager, the best validation DSC.
  tensorboard/          TensorBoard event files (tensorboardX).
  history.json          per-step losses and per-epoch validation metrics.
  export/last, export/best  ordinary simsam_jax checkpoints (`load_model`,
                        `simsam_jax.evaluate --config.checkpoint=...`).

A train state is (decoder params, optimiser state) + JSON metadata (global
step, completed epochs, best DSC, history). The data order of epoch e is a
permutation drawn from `np.random.default_rng([seed, e])`, so the state
needs no RNG: killing the process at any point and re-running the same
command continues from the last checkpoint and ends with parameters
bit-identical to an uninterrupted run.

Data parallelism: the batch is sharded over a 1-D `data` mesh of all
devices (`NamedSharding(mesh, P("data"))`); parameters and optimiser state
are replicated (`P()`); the train step is one `jax.jit` over the split
state. The batch size must be divisible by the device count.

Modes (`config.mode`): "decoder" is this module's SAM-FT; "lora" and "full"
read images and train the encoder (`simsam_jax.training.image_trainer`,
which runs across processes with `config.distributed`).

Multi-host in decoder mode (not exercised here; the code runs single-host): call
`jax.distributed.initialize()` first thing in every process, build the same
mesh over `jax.devices()` (all hosts), let each host load only its slice of
each global batch (rows `process_index * B / process_count` onwards) and
assemble the global arrays with
`jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")),
local_batch)`; the embedding cache and checkpoints must then live on storage
every host sees, and only process 0 writes TensorBoard and exports.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from ml_collections import ConfigDict

from simsam_jax import workdir as workdir_lib
from simsam_jax import profiles
from simsam_jax.checkpoint import save_checkpoint
from simsam_jax.data import loading, protocols, registry, splitting
from simsam_jax.data.common import DatasetError
from simsam_jax.evaluation import compute_metrics
from simsam_jax.simsam import pipeline
from simsam_jax.training import data as train_data
from simsam_jax.training import losses

# Settings that change the trained weights: a workdir refuses to mix them.
RESULT_KEYS = ("dataset", "builder_config", "checkpoint", "protocol", "epochs", "batch_size",
               "learning_rate", "weight_decay", "seed", "iou_target_threshold",
               "train_split", "val_split", "nsd_tolerance", "loss", "max_grad_norm",
               "weight_decay_mask", "split_scheme", "profile", "precision")
DECODER = nnx.PathContains("mask_decoder")
ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8
VAL_CHUNK = 8


class TrainingError(ValueError):
  """A bad configuration or workdir, reported before any work starts."""


# ----------------------------------------------------------------------------
# Model split, optimiser, steps.
# ----------------------------------------------------------------------------


def split_model(model):
  """(graphdef, decoder State, frozen State): mask_decoder vs everything else."""
  return nnx.split(model, DECODER, ...)


def _to_state(template, pure):
  state = jax.tree.map(lambda x: x, template)  # fresh Variables
  nnx.replace_by_pure_dict(state, pure)
  return state


# The LayerNorm that transformers 4.30.2 implemented as a plain nn.Module
# (`SamLayerNorm`, HF name `mask_decoder.upscale_layer_norm`): its Trainer
# decayed that norm's weight.
_NORMS_DECAYED_BY_TRANSFORMERS_4_30 = (("mask_decoder", "upscale_norm"),)
WEIGHT_DECAY_MASKS = ("transformers_4_30", "bias_and_norm", "all")


def _key(entry) -> Any:
  return entry.key if hasattr(entry, "key") else entry.idx


def weight_decay_mask(model, rule: str) -> dict[str, Any]:
  """Which decoder parameters receive weight decay (see the module doc).

  Args:
    model: the SAM model (its `nnx.LayerNorm` modules are found by type).
    rule: one of `WEIGHT_DECAY_MASKS`.
  Returns:
    A pure dict shaped like `nnx.to_pure_dict(split_model(model)[1])` with a
    bool per parameter (True = decayed), for `optax.adamw(mask=...)`.
  """
  if rule not in WEIGHT_DECAY_MASKS:
    raise ValueError(f"unknown weight decay mask {rule!r}; use one of {list(WEIGHT_DECAY_MASKS)}")
  norms = {tuple(path) for path, node in nnx.iter_graph(model)
           if isinstance(node, nnx.LayerNorm)}
  if rule == "transformers_4_30":
    norms -= set(_NORMS_DECAYED_BY_TRANSFORMERS_4_30)

  def decayed(keypath, _):
    path = tuple(_key(k) for k in keypath)
    if rule == "all":
      return True
    return path[-1] != "bias" and path[:-1] not in norms

  params = nnx.to_pure_dict(split_model(model)[1])
  return jax.tree_util.tree_map_with_path(decayed, params)


def make_optimizer(config: ConfigDict, total_steps: int,
                   decay_mask: Any = None) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW with a linear lr decay to 0 (module doc).

  Args:
    config: uses learning_rate, weight_decay, max_grad_norm (0 = no clipping).
    total_steps: steps over which the lr falls from `learning_rate` to 0.
    decay_mask: `weight_decay_mask(...)`, or None to decay every parameter.
  """
  warmup = int(config.get("warmup_steps", 0))
  schedule = optax.linear_schedule(float(config.learning_rate), 0.0, max(total_steps - warmup, 1))
  if warmup > 0:
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, float(config.learning_rate), warmup), schedule], [warmup])
  max_norm = float(config.max_grad_norm)
  return optax.chain(
      optax.clip_by_global_norm(max_norm) if max_norm > 0 else optax.identity(),
      optax.adamw(schedule, b1=ADAM_B1, b2=ADAM_B2, eps=ADAM_EPS,
                  weight_decay=float(config.weight_decay), mask=decay_mask))


def make_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), ("data",))


def make_steps(graphdef, decoder_template, frozen_template, tx, threshold: float, mesh: Mesh,
               seg_loss: str = losses.DEFAULT_SEG_LOSS):
  """Jitted `train_step` and `predict` over pure-dict parameters.

  `threshold` is the IoU-target logit threshold, `seg_loss` a key of
  `losses.SEG_LOSSES`.

  train_step(params, opt_state, frozen, embeddings (B, G, G, C), boxes (B, 4),
  targets (B, M, M), weights (B,)) -> (params, opt_state, loss ()).
  predict(params, frozen, embeddings (B, G, G, C), boxes (B, 4)) ->
  (B, M, M) float32 low-res logits.
  """

  def decode(params, frozen, embeddings, boxes):
    model = nnx.merge(graphdef, _to_state(decoder_template, params),
                      _to_state(frozen_template, frozen))
    low, iou = model.decode(embeddings, boxes=boxes[:, None])
    return low[:, 0, 0], iou[:, 0, 0]

  def loss_fn(params, frozen, embeddings, boxes, targets, weights):
    low, iou = decode(params, frozen, embeddings, boxes)
    loss, _ = losses.sam_ft_loss(low, iou, targets, weights, threshold, seg_loss)
    return loss

  def train_step(params, opt_state, frozen, embeddings, boxes, targets, weights):
    loss, grads = jax.value_and_grad(loss_fn)(params, frozen, embeddings, boxes, targets,
                                              weights)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  replicated = NamedSharding(mesh, P())
  batch = NamedSharding(mesh, P("data"))
  train_step = jax.jit(
      train_step, in_shardings=(replicated, replicated, replicated, batch, batch, batch, batch),
      out_shardings=(replicated, replicated, replicated))
  predict = jax.jit(lambda p, f, e, b: decode(p, f, e, b)[0])
  return train_step, predict, jax.jit(loss_fn)


def epoch_batches(num_examples: int, batch_size: int, seed: int, epoch: int):
  """Index batches of one epoch: a seeded permutation, the last batch padded.

  Returns a list of ((B,) int indices, (B,) float32 weights); padding rows
  repeat an index with weight 0.
  """
  order = np.random.default_rng([seed, epoch]).permutation(num_examples)
  out = []
  for start in range(0, num_examples, batch_size):
    idx = order[start:start + batch_size]
    weights = np.ones(batch_size, np.float32)
    if len(idx) < batch_size:
      weights[len(idx):] = 0.0
      idx = np.concatenate([idx, np.full(batch_size - len(idx), idx[0])])
    out.append((idx, weights))
  return out


def validate(predict, params, frozen, split: train_data.SplitArrays,
             tolerance: float) -> dict[str, float]:
  """Mean DSC and NSD (NaN-excluded) of box-only SAM masks on a split."""
  n = len(split.ids)
  if n == 0:
    return {"dsc": float("nan"), "nsd": float("nan")}
  m = split.targets.shape[-1]
  lows = []
  for start in range(0, n, VAL_CHUNK):
    idx = np.arange(start, start + VAL_CHUNK) % n
    lows.append(np.asarray(jax.device_get(predict(params, frozen, split.embeddings[idx],
                                                  split.boxes[idx]))))
  lows = np.concatenate(lows)[:n]
  scores = {"dsc": [], "nsd": []}
  for low, info, gt in zip(lows, split.infos, split.masks):
    pred = np.asarray(pipeline.low_res_masks(jnp.asarray(low), info, m))
    metrics = compute_metrics(pred, gt, tolerance=tolerance, policy="nan")
    for k in scores:
      scores[k].append(metrics[k])
  return {k: (float(np.nanmean(v)) if np.isfinite(v).any() else float("nan"))
          for k, v in scores.items()}


# ----------------------------------------------------------------------------
# Config and workdir checks.
# ----------------------------------------------------------------------------


# `simsam_jax.workdir.load_sam_model`, with errors as TrainingError.
load_sam_model = functools.partial(workdir_lib.load_sam_model, error=TrainingError)


write_atomic = workdir_lib.write_atomic
_config_dict = workdir_lib.config_dict


def validate_config(config: ConfigDict) -> protocols.Protocol:
  """Checks values that need no data or model; returns the protocol."""
  try:
    registry.get(config.dataset)
  except ValueError as e:
    raise TrainingError(f"--config.dataset: {e}") from None
  try:
    protocol = protocols.get_protocol(config.protocol)
  except ValueError as e:
    raise TrainingError(f"--config.protocol: {e}") from None
  if config.loss not in losses.SEG_LOSSES:
    raise TrainingError(f"--config.loss={config.loss!r}: unknown loss; use one of "
                        f"{sorted(losses.SEG_LOSSES)}")
  if config.weight_decay_mask not in WEIGHT_DECAY_MASKS:
    raise TrainingError(f"--config.weight_decay_mask={config.weight_decay_mask!r}: unknown; "
                        f"use one of {list(WEIGHT_DECAY_MASKS)}")
  if config.split_scheme not in splitting.SPLIT_SCHEMES:
    raise TrainingError(f"--config.split_scheme={config.split_scheme!r}: unknown split "
                        f"scheme; use one of {sorted(splitting.SPLIT_SCHEMES)}")
  if (config.split_scheme != splitting.DEFAULT_SPLIT_SCHEME
      and (config.train_split, config.val_split) != ("train", "validation")):
    raise TrainingError(
        f"--config.split_scheme={config.split_scheme!r} moves committed validation ids into "
        f"train, so it needs --config.train_split=train and --config.val_split=validation "
        f"(got {config.train_split!r}, {config.val_split!r}); or use "
        f"--config.split_scheme={splitting.DEFAULT_SPLIT_SCHEME}")
  if not float(config.max_grad_norm) >= 0:
    raise TrainingError(f"--config.max_grad_norm must be >= 0 (0: no clipping); got "
                        f"{config.max_grad_norm}")
  for name in ("epochs", "batch_size"):
    if int(config[name]) <= 0:
      raise TrainingError(f"--config.{name} must be positive; got {config[name]}")
  devices = jax.device_count()
  if int(config.batch_size) % devices:
    raise TrainingError(
        f"--config.batch_size={config.batch_size} is not divisible by the {devices} devices "
        "(the batch is sharded over all of them); change the batch size")
  if not config.data_dir:
    raise TrainingError("--config.data_dir is required (where the TFDS dataset is built)")
  return protocol


def check_workdir(workdir: str, config: ConfigDict, architecture: dict[str, Any]) -> None:
  """Refuses a workdir whose run used another config or architecture; then records them."""
  config_path = os.path.join(workdir, "config.json")
  run_path = os.path.join(workdir, "run.json")
  current = _config_dict(config)
  try:
    workdir_lib.refuse_changed_config(workdir, current, RESULT_KEYS)
  except ValueError as e:
    raise TrainingError(str(e)) from None
  if os.path.exists(run_path):
    with open(run_path) as f:
      previous_arch = json.load(f).get("architecture")
    if previous_arch is not None:  # runs recorded before encoders were nested: flat
      from simsam_jax.modeling.config import SamConfig
      previous_arch = json.loads(json.dumps(SamConfig.from_dict(previous_arch).to_dict()))
    if previous_arch != architecture:
      raise TrainingError(
          f"--config.checkpoint={config.checkpoint} has another architecture than the run in "
          f"--workdir={workdir} (was {previous_arch}, now {architecture}); use another workdir")
  write_atomic(config_path, json.dumps(current, indent=2, sort_keys=True))
  write_atomic(run_path, json.dumps({"architecture": architecture}, indent=2, sort_keys=True))


def _data_args(config: ConfigDict) -> dict[str, Any]:
  return dict(data_dir=os.path.expanduser(config.data_dir),
              manual_dir=os.path.expanduser(config.manual_dir) if config.manual_dir else None,
              config=config.builder_config or None, on_bad_example=config.on_bad_example)


def load_examples(config: ConfigDict, split: str):
  try:
    return loading.load_split(config.dataset, split, **_data_args(config))
  except (DatasetError, ValueError) as e:
    raise TrainingError(f"{config.dataset}/{split}: {e}") from None


def moved_to_train(config: ConfigDict) -> list[str]:
  """The validation ids `config.split_scheme` trains on ([] for 80_10_10).

  Read from the split files the built dataset records (`split_files` of its
  build metadata).
  """
  if config.split_scheme == splitting.DEFAULT_SPLIT_SCHEME:
    return []
  try:
    builder = loading.prepare_builder(config.dataset, **_data_args(config))
    files = loading.build_metadata(builder).get("split_files")
    if not files:
      raise ValueError("the built dataset records no split files; rebuild it")
    return splitting.moved_to_train(config.split_scheme,
                                    *(os.path.splitext(f)[0] for f in files))
  except (DatasetError, ValueError) as e:
    raise TrainingError(f"--config.split_scheme={config.split_scheme}: "
                        f"{config.dataset}: {e}") from None


# ----------------------------------------------------------------------------
# Checkpoints.
# ----------------------------------------------------------------------------


def managers(workdir: str):
  """(last, best) Orbax CheckpointManagers under WORKDIR/checkpoints."""
  options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False,
                                         create=True)
  root = os.path.join(os.path.abspath(workdir), "checkpoints")
  return (ocp.CheckpointManager(os.path.join(root, "last"), options=options),
          ocp.CheckpointManager(os.path.join(root, "best"), options=options))


def _opt_dict(opt_state) -> dict[str, Any]:
  return {f"{i:05d}": leaf for i, leaf in enumerate(jax.tree.leaves(opt_state))}


def _save(manager, step: int, params, opt_state, meta: dict[str, Any],
          name: str = "decoder") -> None:
  """Saves {name: params, "optimizer": ...} and the JSON `meta` at `step`."""
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave({name: params, "optimizer": _opt_dict(opt_state)}),
      meta=ocp.args.JsonSave(meta)))
  manager.wait_until_finished()


def _restore(manager, step: int, params, opt_state, name: str = "decoder"):
  """(params, opt_state, meta) at `step`, shaped and sharded like the inputs."""
  target = {name: params, "optimizer": _opt_dict(opt_state)}
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          target)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
  leaves = [restored.state["optimizer"][k] for k in sorted(restored.state["optimizer"])]
  opt = jax.tree.unflatten(jax.tree.structure(opt_state), leaves)
  return restored.state[name], opt, dict(restored.meta)


def finish_epoch(meta: dict[str, Any], epoch_losses, scores: dict[str, float], params,
                 opt_state, managers, writer, bar, progress: bool, epochs: int,
                 name: str = "decoder") -> None:
  """Records an epoch's validation, keeps the best, saves the last (every mode).

  Appends {"epoch", "train_loss", **scores} to meta["validation"], advances
  meta["epoch"], writes the TensorBoard scalars (`writer` may be None: not
  the writing process), saves the state to the best manager when the DSC
  improves (NaN never does; ties keep the earlier epoch) and to the last
  manager, and prints one line under the progress bar.

  Args:
    meta: the run's JSON metadata (step, epoch, best_dsc, best_epoch,
      step_losses, validation), updated in place.
    epoch_losses: the epoch's per-step train losses.
    scores: `validate`'s {"dsc", "nsd"} of the epoch.
    managers: (last, best) Orbax CheckpointManagers; `name` is the
      parameters' key in the saved composite.
  """
  last_manager, best_manager = managers
  epoch = meta["epoch"]
  record = {"epoch": epoch + 1, "train_loss": float(np.mean(epoch_losses)), **scores}
  meta["validation"].append(record)
  meta["epoch"] = epoch + 1
  if writer is not None:
    writer.add_scalar("train/epoch_loss", record["train_loss"], meta["step"])
    writer.add_scalar("val/dsc", scores["dsc"], meta["step"])
    writer.add_scalar("val/nsd", scores["nsd"], meta["step"])
  score = scores["dsc"] if math.isfinite(scores["dsc"]) else -math.inf
  if meta["best_dsc"] is None or score > meta["best_dsc"]:
    meta["best_dsc"], meta["best_epoch"] = score, epoch + 1
    if best_manager.latest_step() != meta["step"]:
      _save(best_manager, meta["step"], params, opt_state, meta, name)
  _save(last_manager, meta["step"], params, opt_state, meta, name)
  if writer is not None:
    writer.flush()
  message = (f"epoch {epoch + 1}/{epochs}: train loss {record['train_loss']:.4f}, "
             f"val DSC {100 * scores['dsc']:.2f}, NSD {100 * scores['nsd']:.2f}")
  if bar is not None:
    bar.write(message)
  elif progress and writer is not None:
    print(message)


def close_outputs(writer, bar) -> None:
  """Closes the TensorBoard writer and the progress bar (either may be None)."""
  if writer is not None:
    writer.close()
  if bar is not None:
    bar.close()


# ----------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------


def finetune(config: ConfigDict, workdir: str, progress: bool = True) -> dict[str, Any]:
  """Trains (or resumes) SAM-FT in `workdir`; returns the history.

  Returns:
    {"step_losses": [float] per global step, "epoch_losses": [float] mean
    train loss per epoch, "validation": [{"epoch", "dsc", "nsd"}],
    "best_epoch": int, "total_steps": int, "cache_hits": {split: bool},
    "exports": {"last": path, "best": path}, "split_ids": {"train": [id],
    "val": [id]} (after `config.split_scheme`)}.
  Raises:
    TrainingError: bad config or workdir, before any work.

  `config.mode` other than "decoder" ("lora", "full") trains from images:
  `simsam_jax.training.image_trainer.finetune_images`.
  """
  from simsam_jax.training import image_trainer  # pylint: disable=import-outside-toplevel
  if image_trainer.check_mode(config) != "decoder":
    return image_trainer.finetune_images(config, workdir, progress)
  if config.get("prompt", "box") != "box":
    raise TrainingError(f"--config.prompt={config.prompt!r}: decoder mode trains on cached "
                        "embeddings with the GT box only; use --config.prompt=box, or "
                        "--config.mode=lora / full for other prompt schemes")
  protocol = validate_config(config)
  model, checkpoint_info = load_sam_model(config.checkpoint, config.get("precision", "float32"),
                                          config.get("attention_impl", "xla"))
  try:
    profile, _ = profiles.resolve(checkpoint_info["profile"], config.get("profile") or None,
                                  "--config.profile")
  except ValueError as e:
    raise TrainingError(str(e)) from None
  architecture = model.config.to_dict()
  check_workdir(workdir, config, json.loads(json.dumps(architecture)))
  image_size = model.config.image_size

  splits = {}
  for role, split in (("train", config.train_split), ("val", config.val_split)):
    examples = load_examples(config, split)
    try:
      splits[role] = train_data.prepare_split(examples, protocol, config.dataset, image_size,
                                              profile)
    except (ValueError, DatasetError) as e:
      raise TrainingError(f"{config.dataset}/{split}: {e}") from None
  if not splits["train"].ids:
    raise TrainingError(f"{config.dataset}/{config.train_split} is empty")
  moved = moved_to_train(config)

  graphdef, decoder_state, frozen_state = split_model(model)
  from simsam_jax.modeling.sam import make_sam_functions
  functions, full_state = make_sam_functions(model)
  fingerprint = train_data.checkpoint_fingerprint(
      config.checkpoint, nnx.to_pure_dict(full_state)["image_encoder"])
  cache_dir = os.path.expanduser(config.cache_dir or os.path.join(workdir, "embedding_cache"))
  cache_hits = {}
  for role, split_name in (("train", config.train_split), ("val", config.val_split)):
    fields = {"checkpoint": fingerprint, "dataset": config.dataset,
              "builder_config": config.builder_config, "split": split_name,
              "protocol": str(config.protocol),
              "image_size": image_size}
    if model.policy.precision != "float32":  # float32 caches keep their keys
      fields["precision"] = model.policy.precision
    if profile != profiles.DEFAULT_PROFILE:  # "sam" caches keep their keys
      fields["profile"] = profile
    cache_hits[role] = train_data.load_or_encode(splits[role], cache_dir, fields,
                                                 functions.encode, full_state, image_size,
                                                 profile)
  del functions, full_state

  if moved:
    splits["val"], splits["train"] = train_data.move_examples(splits["val"], splits["train"],
                                                              moved)
  train, val = splits["train"], splits["val"]
  batch_size, epochs, seed = int(config.batch_size), int(config.epochs), int(config.seed)
  steps_per_epoch = math.ceil(len(train.ids) / batch_size)
  total_steps = steps_per_epoch * epochs
  tx = make_optimizer(config, total_steps, weight_decay_mask(model, config.weight_decay_mask))
  mesh = make_mesh()
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P("data"))
  params = jax.device_put(nnx.to_pure_dict(decoder_state), replicated)
  frozen = jax.device_put(nnx.to_pure_dict(frozen_state), replicated)
  opt_state = jax.device_put(tx.init(params), replicated)
  train_step, predict, _ = make_steps(graphdef, decoder_state, frozen_state, tx,
                                      float(config.iou_target_threshold), mesh, config.loss)

  last_manager, best_manager = managers(workdir)
  meta = {"step": 0, "epoch": 0, "best_dsc": None, "best_epoch": None, "step_losses": [],
          "validation": []}
  if last_manager.latest_step() is not None:
    params, opt_state, meta = _restore(last_manager, last_manager.latest_step(), params,
                                       opt_state)

  from tensorboardX import SummaryWriter
  writer = None
  if meta["step"] < total_steps:
    # On resume, TensorBoard drops events a killed run wrote after this checkpoint.
    writer = SummaryWriter(os.path.join(workdir, "tensorboard"),
                           purge_step=meta["step"] + 1 if meta["step"] else None)
  bar = None
  if progress and meta["step"] < total_steps:
    from tqdm import tqdm
    bar = tqdm(total=total_steps, initial=meta["step"], desc=f"SAM-FT {config.dataset}",
               unit="step")
  every = int(config.checkpoint_every_steps)
  try:
    while meta["step"] < total_steps:
      epoch = meta["epoch"]
      batches = epoch_batches(len(train.ids), batch_size, seed, epoch)
      for idx, weights in batches[meta["step"] - epoch * steps_per_epoch:]:
        arrays = [train.embeddings[idx], train.boxes[idx], train.targets[idx], weights]
        arrays = [jax.device_put(a, batch_sharding) for a in arrays]
        params, opt_state, loss = train_step(params, opt_state, frozen, *arrays)
        loss = float(loss)
        meta["step"] += 1
        meta["step_losses"].append(loss)
        writer.add_scalar("train/loss", loss, meta["step"])
        if bar is not None:
          bar.update(1)
          bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.4f}")
        end_of_epoch = meta["step"] == (epoch + 1) * steps_per_epoch
        if every > 0 and meta["step"] % every == 0 and not end_of_epoch:
          _save(last_manager, meta["step"], params, opt_state, meta)
          writer.flush()
      # End of epoch: validation, best, last.
      epoch_losses = meta["step_losses"][epoch * steps_per_epoch:]
      scores = validate(predict, params, frozen, val, float(config.nsd_tolerance))
      finish_epoch(meta, epoch_losses, scores, params, opt_state,
                   (last_manager, best_manager), writer, bar, progress, epochs)
  finally:
    close_outputs(writer, bar)

  # Exports: ordinary simsam_jax checkpoints.
  exports = {}
  for name, manager in (("last", last_manager), ("best", best_manager)):
    dst = os.path.join(os.path.abspath(workdir), "export", name)
    exports[name] = dst
    if os.path.exists(os.path.join(dst, "simsam_jax.json")):
      continue
    if os.path.exists(dst):
      shutil.rmtree(dst)
    chosen, _, chosen_meta = _restore(manager, manager.latest_step(), params, opt_state)
    state = nnx.split(nnx.merge(graphdef, _to_state(decoder_state, jax.device_get(chosen)),
                                _to_state(frozen_state, jax.device_get(frozen))))[1]
    save_checkpoint(dst, state, model.config, {
        "format": "sam_ft", "base_checkpoint": checkpoint_info, "epoch": chosen_meta["epoch"],
        "step": chosen_meta["step"], "validation": chosen_meta["validation"][-1],
        "config": _config_dict(config)}, profile=profile)
  history = {"step_losses": meta["step_losses"],
             "epoch_losses": [v["train_loss"] for v in meta["validation"]],
             "validation": meta["validation"], "best_epoch": meta["best_epoch"],
             "total_steps": total_steps, "cache_hits": cache_hits, "exports": exports,
             "split_ids": {"train": list(train.ids), "val": list(val.ids)}}
  write_atomic(os.path.join(workdir, "history.json"),
               json.dumps(history, indent=2, allow_nan=True))
  return history
