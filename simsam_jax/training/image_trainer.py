r"""The image-reading training modes: `lora` and `full` (and pre-training from scratch).

`simsam_jax.training.trainer.finetune` dispatches here when `config.mode` is
not "decoder". Each step encodes the images (the encoder changes, so there is
no embedding cache), decodes the configured prompts
(`simsam_jax.training.prompts`) and updates

  lora: only the `nnx.LoRAParam` adapters (`simsam_jax.training.lora`) on
        the encoder's attention (and the decoder's with `lora_decoder`);
        everything else frozen.
  full: every `nnx.Param` (image encoder, prompt encoder, mask decoder).

With `remat` (default: on in `full`, off in `lora`; `remat_enabled`), each
encoder block is rematerialised (`nnx.remat`): its activations are
recomputed in the backward pass instead of stored (XLA's CPU compiler shows
no saving from it; benchmarks/RESULTS.md). LoRA's gradients flow back
through every encoder block too, but its frozen matmuls keep no input
activations for the backward (no weight gradient), so it stores far less and
by default skips the recomputation. With
`attention_query_rows` > 0 the global-attention blocks compute over chunks
of query rows, each rematerialised (`ChunkedAttention`): the (B, heads, T, T)
bias / logits / probabilities of T = 4096 queries were what kept a ViT-B
batch-2 step above 16 GB (`compiled_step_memory`, benchmarks/RESULTS.md).

Validation (finite datasets): at the end of every epoch (ceil(N / batch)
steps, and at the last step) the current model encodes `val_split` and
`trainer.validate` scores box-only SAM (DSC, NSD); `trainer.finish_epoch`
records it, keeps the best checkpoint (checkpoints/best) and saves the last,
exactly as decoder mode. export/best is the best epoch (merged in `lora`).
The endless phantom stream has no epochs and no validation.

Data: `simsam_jax.training.pipeline` (grain over `tfds.data_source`, or the
endless phantom stream for `dataset="phantom_stream"`), deterministic;
its iterator state is saved in every checkpoint's JSON metadata.

Loss: `losses.sam_ft_loss` (`config.loss`), averaged over the interactive
rounds. Optimiser: `trainer.make_optimizer` (clipping + AdamW, linear decay,
optional linear warm-up `warmup_steps`); weight decay on kernels only
(biases, norms, embeddings and position tables undecayed).

Multi-process (`config.distributed`, parsed like `simsam_jax.evaluate`'s):
one global batch `batch_size` sharded over all devices of all processes
(`NamedSharding(mesh, P("data"))`); each process reads only its rows
(`pipeline.local_stream`) and assembles the global batch with
`jax.make_array_from_process_local_data`. Parameters and optimiser state are
replicated. Every process takes part in the Orbax checkpoint saves; only
process 0 writes TensorBoard, history and exports.

Determinism: the data of global step s and the step's random key
(`fold_in(PRNGKey(seed), s)`, then per round and per global row) depend on s
only, so a killed run resumed from its last checkpoint ends bit-identical to
an uninterrupted one, and P processes reproduce one process's losses.

Workdir: config.json / run.json as in decoder mode, checkpoints/last and
checkpoints/best (Orbax), tensorboard/, history.json, export/last (merged, an
ordinary checkpoint), export/best (with validation) and, in lora mode with
`lora_export` "adapter" or "both", export/adapter (adapter weights + the base
weights' sha256).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from ml_collections import ConfigDict

from simsam_jax import profiles
from simsam_jax.checkpoint import save_checkpoint
from simsam_jax.modeling.config import SamConfig
from simsam_jax.modeling.image_encoder import Attention, Block
from simsam_jax.modeling.sam import build_sam
from simsam_jax.training import data as train_data
from simsam_jax.training import lora as lora_lib
from simsam_jax.training import losses
from simsam_jax.training import pipeline
from simsam_jax.training import prompts
from simsam_jax.training import trainer as base

MODES = ("decoder", "lora", "full")
LORA_EXPORTS = ("merged", "adapter", "both")
PHANTOM_STREAM = "phantom_stream"
ADAPTER_FILE = "adapter.json"
IMAGE_RESULT_KEYS = base.RESULT_KEYS + (
    "mode", "prompt", "num_rounds", "lora_rank", "lora_alpha", "lora_decoder", "steps",
    "augment", "architecture", "init_seed", "warmup_steps", "remat", "first_prompt",
    "attention_query_rows")
# What a run recorded before these keys existed did: interactive runs started
# from the box, global attention was not chunked.
IMPLIED_BY_OLDER_RUNS = {"first_prompt": "box", "attention_query_rows": 0}


class RematBlock(Block):
  """An encoder `Block` whose call is rematerialised (`nnx.remat`); same parameters."""

  @nnx.remat
  def __call__(self, x):
    return Block.__call__(self, x)


class ChunkedAttention(Attention):
  """Global attention over chunks of `query_rows` grid rows (all heads), rematerialised.

  `Attention.attend_all` builds the (B, N, T, T) float32 relative-position
  bias and logits of all T = H * W queries at once; at ViT-B 1024
  (T = 4096) each such tensor is 1.6 GB per 2 images, and a global block's
  backward holds several. Here `Attention.attend_chunks` splits the queries
  into H / query_rows chunks of query_rows * W queries, each chunk's
  probabilities rebuilt in the backward from its log-sum-exp
  (`encoders.vit.recomputed_attention`): the largest tensors are
  (B, N, query_rows * W, T). `query_rows` 0 (or one that does not divide H,
  or >= H) is all queries at once, on every backend (the inference
  `Attention` chunks by itself on CPU; a training run's numerics follow its
  config instead).

  Args of `__call__`: x (B, H, W, C) float, as `Attention`.
  """

  query_rows = 0  # set per instance by `prepare_model`

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    rows = int(self.query_rows)
    q, k, v = self.qkv_heads(x)
    if rows <= 0 or rows >= h or h % rows:
      out = self.attend_all(q, k, v, h, w)
    else:
      out = self.attend_chunks(q, k, v, h, w, rows, self.num_heads, remat=True)
    return self.proj(out.reshape(b, h, w, c))


def check_mode(config: ConfigDict) -> str:
  mode = config.get("mode", "decoder")
  if mode not in MODES:
    raise base.TrainingError(f"--config.mode={mode!r}: unknown mode; use one of {list(MODES)}")
  return mode


def validate_image_config(config: ConfigDict) -> None:
  """Checks that need no data or weights (the LoRA width is checked on the model)."""
  try:
    prompts.check_scheme(config.prompt)
    prompts.check_first_prompt(config.get("first_prompt", "box"))
    pipeline.AugmentConfig.from_config(config.get("augment", {})).validate()
  except ValueError as e:
    raise base.TrainingError(str(e)) from None
  if config.mode == "lora":
    if int(config.lora_rank) <= 0:
      raise base.TrainingError(f"--config.lora_rank={config.lora_rank}: must be positive")
    if config.get("lora_export", "merged") not in LORA_EXPORTS:
      raise base.TrainingError(f"--config.lora_export={config.lora_export!r}: use one of "
                               f"{list(LORA_EXPORTS)}")
  if config.get("first_prompt", "box") != "box" and config.prompt != "interactive":
    raise base.TrainingError(f"--config.first_prompt={config.first_prompt!r} needs "
                             "--config.prompt=interactive (the other schemes are box prompts)")
  if int(config.get("attention_query_rows", 0)) < 0:
    raise base.TrainingError(f"--config.attention_query_rows={config.attention_query_rows}: "
                             "must be >= 0 (0 = all queries at once)")
  if int(config.get("num_rounds", 0)) < 0:
    raise base.TrainingError(f"--config.num_rounds={config.num_rounds}: must be >= 0")
  if int(config.batch_size) <= 0:
    raise base.TrainingError(f"--config.batch_size must be positive; got {config.batch_size}")
  devices = jax.device_count()
  if int(config.batch_size) % devices:
    raise base.TrainingError(
        f"--config.batch_size={config.batch_size} (the global batch) is not divisible by the "
        f"{devices} devices of all processes; change the batch size")
  if config.dataset != PHANTOM_STREAM:
    base.validate_config(config)
  if int(config.get("steps", 0)) <= 0 and config.dataset == PHANTOM_STREAM:
    raise base.TrainingError("--config.steps must be positive for the endless phantom stream")


def build_model(config: ConfigDict):
  """(model, checkpoint_info): from `config.checkpoint`, or from scratch with `architecture`."""
  arch = config.get("architecture", None)
  if arch:
    try:
      sam_config = SamConfig.from_dict(arch.to_dict() if hasattr(arch, "to_dict") else dict(arch))
      model = build_sam(sam_config, int(config.get("init_seed", 0)),
                        dtype=config.get("precision", "float32"))
    except ValueError as e:
      raise base.TrainingError(f"--config.architecture: {e}") from None
    return model, {"spec": "scratch", "random_weights": True, "sha256": None,
                   "profile": profiles.DEFAULT_PROFILE, "init_seed": int(config.init_seed)}
  return base.load_sam_model(config.checkpoint, config.get("precision", "float32"),
                             config.get("attention_impl", "xla"))


def weights_sha256(model) -> str:
  """sha256 over every weight of `model` (sorted paths), for adapter exports."""
  return train_data.checkpoint_fingerprint("", nnx.to_pure_dict(nnx.state(model)))


def remat_enabled(config: ConfigDict) -> bool:
  """`config.remat`, or when it is None the mode's default: `full` True, `lora` False."""
  value = config.get("remat", None)
  return config.get("mode", "decoder") == "full" if value is None else bool(value)


def prepare_model(model, config: ConfigDict):
  """Wraps / marks the model for `config.mode`; returns the trainable filter."""
  if config.mode == "lora":
    try:
      lora_lib.add_lora(model, int(config.lora_rank), float(config.lora_alpha),
                        decoder=bool(config.get("lora_decoder", False)),
                        rngs=nnx.Rngs(int(config.seed)))
    except ValueError as e:
      raise base.TrainingError(str(e)) from None
  if remat_enabled(config):
    for block in model.image_encoder.blocks:
      block.__class__ = RematBlock
  rows = int(config.get("attention_query_rows", 0))
  for block in model.image_encoder.blocks:
    if block.window_size == 0:  # global attention: chunked as configured, never by itself
      block.attn.__class__ = ChunkedAttention
      block.attn.query_rows = rows
  return nnx.LoRAParam if config.mode == "lora" else nnx.Param


def _decay_mask(params) -> Any:
  return jax.tree_util.tree_map_with_path(
      lambda path, _: base._key(path[-1]) in ("kernel", "lora_a", "lora_b"), params)


def make_image_steps(graphdef, train_template, frozen_template, tx, config: ConfigDict, mesh,
                     image_size: int):
  """Jitted train_step(params, opt, frozen, batch, key) -> (params, opt, loss)."""
  threshold = float(config.iou_target_threshold)
  seg_loss = config.loss
  scheme = config.prompt
  rounds = int(config.get("num_rounds", 0)) if scheme == "interactive" else 0

  def loss_fn(params, frozen, batch, key):
    model = nnx.merge(graphdef, base._to_state(train_template, params),
                      base._to_state(frozen_template, frozen))
    embeddings = model.encode_image(batch["pixels"])

    def decode(emb, points, labels, boxes, mask):
      low, iou = model.decode(
          emb, None if points is None else points[:, None],
          None if labels is None else labels[:, None],
          None if boxes is None else boxes[:, None],
          None if mask is None else mask[:, None])
      return low[:, 0, 0], iou[:, 0, 0]

    def one_loss(low, iou, targets, weights):
      return losses.sam_ft_loss(low, iou, targets, weights, threshold, seg_loss)[0]

    weights = jnp.ones((batch["box"].shape[0],), jnp.float32)
    loss, _ = prompts.interactive_losses(decode, one_loss, embeddings, batch["box"],
                                         batch["target"], batch["valid"], weights, key,
                                         rounds, image_size,
                                         config.get("first_prompt", "box"))
    return loss

  def train_step(params, opt_state, frozen, batch, key):
    loss, grads = jax.value_and_grad(loss_fn)(params, frozen, batch, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  replicated = NamedSharding(mesh, P())
  sharded = NamedSharding(mesh, P("data"))
  return jax.jit(train_step,
                 in_shardings=(replicated, replicated, replicated, sharded, replicated),
                 out_shardings=(replicated, replicated, replicated),
                 donate_argnums=(0, 1))


def compiled_step_memory(config: ConfigDict, batch_size: int) -> dict[str, int]:
  """XLA's memory estimate of one compiled `lora` / `full` train step, without running it.

  Builds the model of `config` (`checkpoint` or `architecture`), prepares it
  for `config.mode` (adapters, `remat`), lowers the jitted step on abstract
  arguments (`jax.ShapeDtypeStruct`: no batch is allocated) and compiles it.

  Returns:
    {"argument_bytes", "output_bytes", "temp_bytes", "alias_bytes",
     "peak_bytes"}: peak = arguments + temps (the outputs alias the donated
    parameters and optimiser state), as reported by the compiler of the
    default backend (an estimate on CPU).
  """
  model, _ = build_model(config)
  trainable = prepare_model(model, config)
  c = model.config
  s, m = c.image_size, c.mask_input_size
  graphdef, train_state, frozen_state = nnx.split(model, trainable, ...)
  abstract = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
  params = abstract(nnx.to_pure_dict(train_state))
  frozen = abstract(nnx.to_pure_dict(frozen_state))
  tx = base.make_optimizer(config, 1000, _decay_mask(params))
  opt_state = jax.eval_shape(tx.init, params)
  step = make_image_steps(graphdef, train_state, frozen_state, tx, config, base.make_mesh(), s)
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  batch = {"pixels": f32(batch_size, s, s, 3), "target": f32(batch_size, m, m),
           "valid": f32(batch_size, m, m), "box": f32(batch_size, 4)}
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  stats = step.lower(params, opt_state, frozen, batch, key).compile().memory_analysis()
  out = {"argument_bytes": int(stats.argument_size_in_bytes),
         "output_bytes": int(stats.output_size_in_bytes),
         "temp_bytes": int(stats.temp_size_in_bytes),
         "alias_bytes": int(stats.alias_size_in_bytes)}
  out["peak_bytes"] = out["argument_bytes"] + out["temp_bytes"]
  return out


def make_predict(graphdef, train_template, frozen_template):
  """Jitted (predict, encode) over (params, frozen) pure dicts, for validation.

  predict(params, frozen, embeddings (B, G, G, C), boxes (B, 4)) -> (B, M, M)
  float32 low-res logits of the box prompt (as `trainer.validate` expects);
  encode((params, frozen), pixels (1, S, S, 3)) -> (1, G, G, C) embeddings
  (as `data.encode_images` expects).
  """
  def model(params, frozen):
    return nnx.merge(graphdef, base._to_state(train_template, params),
                     base._to_state(frozen_template, frozen))

  def predict(params, frozen, embeddings, boxes):
    return model(params, frozen).decode(embeddings, boxes=boxes[:, None])[0][:, 0, 0]

  def encode(state, pixels):
    return model(*state).encode_image(pixels)

  return jax.jit(predict), jax.jit(encode)


def load_validation(config: ConfigDict, image_size: int, profile: str):
  """`config.val_split` as `data.SplitArrays` with its images (encoded at each epoch end).

  The validation ids that `config.split_scheme` moves into train are
  dropped. None when the split is empty (no validation, no export/best).
  """
  protocol = base.validate_config(config)
  examples = base.load_examples(config, config.val_split)
  moved = set(base.moved_to_train(config))
  examples = [e for e in examples if str(e["id"]) not in moved]
  if not examples:
    return None
  try:
    return train_data.prepare_split(examples, protocol, config.dataset, image_size, profile)
  except (ValueError, base.DatasetError) as e:
    raise base.TrainingError(f"{config.dataset}/{config.val_split}: {e}") from None


def make_stream(config: ConfigDict, image_size: int, profile: str):
  """(number of examples or None for the endless stream, the global element stream)."""
  aug = pipeline.AugmentConfig.from_config(config.get("augment", {}))
  jitter = config.prompt in ("box_jitter", "interactive") and bool(config.get("jitter_box", True))
  if config.prompt == "box_jitter":
    jitter = True
  if config.dataset == PHANTOM_STREAM:
    source = pipeline.phantom_stream(int(config.get("min_side", 160)),
                                     int(config.get("max_side", 320)))
    dataset, protocol, shuffle, count = "phantom", "native", False, None
  else:
    from simsam_jax.data import loading  # pylint: disable=import-outside-toplevel
    try:
      loading.prepare_builder(config.dataset, **base._data_args(config))
      source = pipeline.source_from_tfds(config.dataset, config.train_split,
                                         os.path.expanduser(config.data_dir),
                                         config.builder_config or None)
    except Exception as e:  # pylint: disable=broad-except
      raise base.TrainingError(f"{config.dataset}/{config.train_split}: {e}") from None
    if len(source) == 0:
      raise base.TrainingError(f"{config.dataset}/{config.train_split} is empty")
    dataset, protocol, shuffle, count = config.dataset, str(config.protocol), True, len(source)
  return count, pipeline.global_stream(source, seed=int(config.seed), image_size=image_size,
                                dataset=dataset, protocol=protocol, augment_config=aug,
                                box_jitter=jitter, shuffle=shuffle, profile=profile)


def _initialize_distributed(config: ConfigDict) -> None:
  from simsam_jax import evaluate as ev  # pylint: disable=import-outside-toplevel
  try:
    ev.initialize_distributed(config.get("distributed", ""))
  except ev.EvaluationError as e:
    raise base.TrainingError(str(e)) from None


def finetune_images(config: ConfigDict, workdir: str, progress: bool = True) -> dict[str, Any]:
  """Trains (or resumes) `lora` / `full` in `workdir`; returns the history.

  Returns:
    {"step_losses": [float], "total_steps": int, "exports": {name: path},
     "validation": [{"epoch", "train_loss", "dsc", "nsd"}], "best_epoch":
     int | None, "trainable_parameters": int, "optimizer_state_elements": int}.
  Raises:
    TrainingError: bad config, workdir or adapter, before any work.
  """
  _initialize_distributed(config)
  validate_image_config(config)
  config.remat = remat_enabled(config)  # recorded resolved: a workdir compares it
  model, checkpoint_info = build_model(config)
  try:
    profile, _ = profiles.resolve(checkpoint_info["profile"], config.get("profile") or None,
                                  "--config.profile")
  except ValueError as e:
    raise base.TrainingError(str(e)) from None
  base_config = model.config
  base_sha = weights_sha256(model) if config.mode == "lora" else None
  trainable = prepare_model(model, config)
  image_size = base_config.image_size
  primary = jax.process_index() == 0
  architecture = json.loads(json.dumps(base_config.to_dict()))
  if primary:
    try:
      base.workdir_lib.refuse_changed_config(workdir, base._config_dict(config),
                                             IMAGE_RESULT_KEYS, IMPLIED_BY_OLDER_RUNS)
    except ValueError as e:
      raise base.TrainingError(str(e)) from None
    base.check_workdir(workdir, config, architecture)

  num_examples, stream = make_stream(config, image_size, profile)
  process_index, process_count = pipeline.process_slice()
  batch_size, seed = int(config.batch_size), int(config.seed)
  local = pipeline.local_stream(stream, batch_size, process_index, process_count)
  if int(config.get("steps", 0)) > 0:
    total_steps = int(config.steps)
  else:
    total_steps = int(config.epochs) * -(-num_examples // batch_size)

  val = None if num_examples is None else load_validation(config, image_size, profile)
  steps_per_epoch = None if num_examples is None else -(-num_examples // batch_size)

  graphdef, train_state, frozen_state = nnx.split(model, trainable, ...)
  mesh = base.make_mesh()
  replicated = NamedSharding(mesh, P())
  sharded = NamedSharding(mesh, P("data"))
  params = jax.device_put(nnx.to_pure_dict(train_state), replicated)
  frozen = jax.device_put(nnx.to_pure_dict(frozen_state), replicated)
  tx = base.make_optimizer(config, total_steps, _decay_mask(params))
  opt_state = jax.device_put(tx.init(params), replicated)
  train_step = make_image_steps(graphdef, train_state, frozen_state, tx, config, mesh,
                                image_size)

  manager, best_manager = base.managers(workdir)
  meta = {"step": 0, "epoch": 0, "best_dsc": None, "best_epoch": None, "step_losses": [],
          "validation": [], "data_iterator": None}
  iterator = pipeline.make_iterator(local, int(config.get("data_threads", 2)))
  if manager.latest_step() is not None:
    params, opt_state, meta = base._restore(manager, manager.latest_step(), params, opt_state,
                                            "params")
    iterator.set_state(meta["data_iterator"])
  predict, encode = make_predict(graphdef, train_state, frozen_state)

  writer = bar = None
  if primary and meta["step"] < total_steps:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    writer = SummaryWriter(os.path.join(workdir, "tensorboard"),
                           purge_step=meta["step"] + 1 if meta["step"] else None)
    if progress:
      from tqdm import tqdm  # pylint: disable=import-outside-toplevel
      bar = tqdm(total=total_steps, initial=meta["step"],
                 desc=f"{config.mode} {config.dataset}", unit="step")
  every = int(config.checkpoint_every_steps)
  root_key = jax.random.PRNGKey(seed)
  try:
    while meta["step"] < total_steps:
      batch = next(iterator)
      batch = {k: jax.make_array_from_process_local_data(sharded, np.asarray(batch[k]))
               for k in pipeline.FIELDS}
      key = jax.random.fold_in(root_key, meta["step"])
      params, opt_state, loss = train_step(params, opt_state, frozen, batch, key)
      loss = float(loss)
      meta["step"] += 1
      meta["step_losses"].append(loss)
      if writer is not None:
        writer.add_scalar("train/loss", loss, meta["step"])
      if bar is not None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
      end_of_epoch = val is not None and (meta["step"] % steps_per_epoch == 0
                                          or meta["step"] == total_steps)
      if end_of_epoch:
        meta["data_iterator"] = iterator.get_state()
        epoch_start = meta["epoch"] * steps_per_epoch
        val.embeddings = train_data.encode_images(encode, (params, frozen), val.images,
                                                  image_size, profile)
        scores = base.validate(predict, params, frozen, val, float(config.nsd_tolerance))
        base.finish_epoch(meta, meta["step_losses"][epoch_start:], scores, params, opt_state,
                          (manager, best_manager), writer, bar, progress,
                          -(-total_steps // steps_per_epoch), "params")
      elif (every > 0 and meta["step"] % every == 0) or meta["step"] == total_steps:
        meta["data_iterator"] = iterator.get_state()
        base._save(manager, meta["step"], params, opt_state, meta, "params")
        if writer is not None:
          writer.flush()
  finally:
    base.close_outputs(writer, bar)

  exports = {}
  pure = jax.device_get(params)
  frozen_host = jax.device_get(frozen)
  if primary:
    merged_model = nnx.merge(graphdef, base._to_state(train_state, pure),
                             base._to_state(frozen_state, frozen_host))
    full = nnx.to_pure_dict(nnx.state(merged_model))
    source = {"format": f"finetune_{config.mode}", "base_checkpoint": checkpoint_info,
              "step": meta["step"], "config": base._config_dict(config)}
    if config.mode == "lora":
      source["lora"] = {"rank": int(config.lora_rank), "alpha": float(config.lora_alpha),
                        "decoder": bool(config.get("lora_decoder", False)),
                        "base_sha256": base_sha}
      export_kind = config.get("lora_export", "merged")
      if export_kind in ("adapter", "both"):
        exports["adapter"] = save_adapter(os.path.join(workdir, "export", "adapter"), full,
                                          source)
      if export_kind in ("merged", "both"):
        exports["last"] = _export(os.path.join(workdir, "export", "last"),
                                  lora_lib.merge_lora(full, int(config.lora_rank),
                                                      float(config.lora_alpha)),
                                  base_config, source, profile)
    else:
      exports["last"] = _export(os.path.join(workdir, "export", "last"), full, base_config,
                                source, profile)
  if val is not None:
    # The best validation epoch, as an ordinary (merged) checkpoint.
    best, _, best_meta = base._restore(best_manager, best_manager.latest_step(), params,
                                       opt_state, "params")
    if primary:
      best_full = nnx.to_pure_dict(nnx.state(nnx.merge(
          graphdef, base._to_state(train_state, jax.device_get(best)),
          base._to_state(frozen_state, frozen_host))))
      if config.mode == "lora":
        best_full = lora_lib.merge_lora(best_full, int(config.lora_rank),
                                        float(config.lora_alpha))
      exports["best"] = _export(os.path.join(workdir, "export", "best"), best_full,
                                base_config, {**source, "step": best_meta["step"],
                                              "epoch": best_meta["epoch"],
                                              "validation": best_meta["validation"][-1]},
                                profile)
  history = {"step_losses": meta["step_losses"], "total_steps": total_steps,
             "exports": exports, "validation": meta.get("validation", []),
             "best_epoch": meta.get("best_epoch"),
             "trainable_parameters": int(sum(np.size(x) for x in jax.tree.leaves(pure))),
             "optimizer_state_elements": int(sum(np.size(x) for x in jax.tree.leaves(opt_state)
                                                 if hasattr(x, "size")))}
  if primary:
    base.write_atomic(os.path.join(workdir, "history.json"),
                      json.dumps(history, indent=2, allow_nan=True))
  return history


def _export(dst: str, pure: dict, sam_config: SamConfig, source: dict, profile: str) -> str:
  """Writes an ordinary checkpoint from a pure dict of the base architecture."""
  dst = os.path.abspath(dst)
  if os.path.exists(os.path.join(dst, "simsam_jax.json")):
    return dst
  if os.path.exists(dst):
    shutil.rmtree(dst)
  template = build_sam(sam_config, 0)
  state = nnx.state(template)
  nnx.replace_by_pure_dict(state, jax.tree.map(np.asarray, pure))
  save_checkpoint(dst, state, sam_config, source, profile=profile)
  return dst


def save_adapter(dst: str, full_pure: dict, source: dict) -> str:
  """export/adapter: adapter.npz (flattened LoRA weights) + adapter.json (rank, alpha, base hash)."""
  dst = os.path.abspath(dst)
  os.makedirs(dst, exist_ok=True)
  flat = {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in
          jax.tree_util.tree_flatten_with_path(lora_lib.adapter_dict(full_pure))[0]}
  np.savez(os.path.join(dst, "adapter.npz"), **flat)
  base.write_atomic(os.path.join(dst, ADAPTER_FILE), json.dumps(source, indent=2, default=str))
  return dst


def load_with_adapter(adapter_dir: str, base_spec: str):
  """The base checkpoint `base_spec` with the adapter in `adapter_dir` folded in.

  Raises:
    TrainingError naming both folders when the base weights' sha256 differs
    from the one the adapter was trained on (checked before any merge).
  """
  with open(os.path.join(adapter_dir, ADAPTER_FILE)) as f:
    source = json.load(f)
  info = source["lora"]
  model, _ = base.load_sam_model(base_spec)
  sha = weights_sha256(model)
  if sha != info["base_sha256"]:
    raise base.TrainingError(
        f"adapter {adapter_dir} was trained on base weights {info['base_sha256']}, but "
        f"--config.checkpoint={base_spec} has {sha}; use the adapter's base checkpoint")
  lora_lib.add_lora(model, int(info["rank"]), float(info["alpha"]),
                    decoder=bool(info["decoder"]), rngs=nnx.Rngs(0))
  state = nnx.state(model)
  full = nnx.to_pure_dict(state)
  with np.load(os.path.join(adapter_dir, "adapter.npz")) as z:
    stored = dict(z)
  flat, treedef = jax.tree_util.tree_flatten_with_path(lora_lib.adapter_dict(full))
  leaves = [stored[jax.tree_util.keystr(path)] for path, _ in flat]
  adapters = jax.tree.unflatten(jax.tree.structure(lora_lib.adapter_dict(full)), leaves)

  def put(d, a):
    for k, v in a.items():
      if isinstance(v, dict) and not ("lora_a" in v):
        put(d[k], v)
      elif isinstance(v, dict):
        d[k]["lora_a"], d[k]["lora_b"] = v["lora_a"], v["lora_b"]
  put(full, adapters)
  merged = lora_lib.merge_lora(full, int(info["rank"]), float(info["alpha"]))
  out = build_sam(model.config, 0)
  out_state = nnx.state(out)
  nnx.replace_by_pure_dict(out_state, jax.tree.map(np.asarray, merged))
  nnx.update(out, out_state)
  return out


__all__ = ["MODES", "finetune_images", "load_with_adapter"]
