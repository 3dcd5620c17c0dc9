r"""Training steps per second of the three modes: decoder, lora, full.

  python benchmarks/train_modes.py                       # vit_b, batch 2, 1024
  python benchmarks/train_modes.py --preset=tiny_1024 --steps=2 --modes=lora,full
  python benchmarks/train_modes.py --memory --modes=lora,full  # compiled memory only

Not a test: builds the jitted train step of each mode exactly as the trainer
does (`trainer.make_steps` for decoder on cached embeddings,
`image_trainer.make_image_steps` for lora / full on images with box
prompts), random weights, a random batch, and prints for each mode the
compile time, the median step time over `--steps` steps (after one warm-up
step), steps/s, the trainable parameters and the optimiser-state elements.
"""

from __future__ import annotations

import os
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import timed  # noqa: E402

_PRESET = flags.DEFINE_string("preset", "vit_b", "SAM preset (random weights).")
_BATCH = flags.DEFINE_integer("batch", 2, "Global batch.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps per mode (after one warm-up).")
_MODES = flags.DEFINE_list("modes", ["decoder", "lora", "full"], "Modes to time.")
_RANK = flags.DEFINE_integer("lora_rank", 8, "LoRA rank.")
_REMAT = flags.DEFINE_boolean("remat", None, "lora / full: nnx.remat on encoder blocks "
                              "(default: each mode's, full on, lora off).")
_ROWS = flags.DEFINE_integer("attention_query_rows", 16,
                             "lora / full: global attention in chunks of this many query rows.")
_MEMORY = flags.DEFINE_boolean(
    "memory", False, "lora / full: print XLA's compiled-step memory estimate instead of timing "
    "(compiles only; nothing runs).")


def _config(mode: str):
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs"))
  import finetune as finetune_config  # pylint: disable=import-outside-toplevel
  c = finetune_config.get_config("busi")
  c.mode, c.prompt, c.lora_rank = mode, "box", _RANK.value
  if _REMAT.value is not None:
    c.remat = _REMAT.value
  c.attention_query_rows = _ROWS.value
  c.checkpoint = f"random:{_PRESET.value}"
  return c


def _remat(mode: str, config) -> str:
  """The remat column: the mode's resolved setting ("-" for decoder)."""
  from simsam_jax.training import image_trainer  # pylint: disable=import-outside-toplevel
  return "-" if mode == "decoder" else str(image_trainer.remat_enabled(config)).lower()


def _size(tree) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(tree) if hasattr(x, "size")))


def time_mode(mode: str) -> dict:
  from simsam_jax.training import image_trainer, trainer  # pylint: disable=import-outside-toplevel
  config = _config(mode)
  model, _ = trainer.load_sam_model(config.checkpoint)
  s, b = model.config.image_size, _BATCH.value
  m = model.config.mask_input_size
  g, c = model.config.image_embedding_size, model.config.prompt_embed_dim
  mesh = trainer.make_mesh()
  rep = NamedSharding(mesh, P())
  rng = np.random.default_rng(0)
  target = np.zeros((b, m, m), np.float32)
  target[:, m // 4: m // 2, m // 4: 3 * m // 4] = 1.0
  box = np.tile(np.array([[s / 4, s / 4, 3 * s / 4, s / 2]], np.float32), (b, 1))
  if mode == "decoder":
    graphdef, train_state, frozen_state = trainer.split_model(model)
    params = jax.device_put(nnx.to_pure_dict(train_state), rep)
    frozen = jax.device_put(nnx.to_pure_dict(frozen_state), rep)
    tx = trainer.make_optimizer(config, 1000)
    opt = jax.device_put(tx.init(params), rep)  # as the step returns it (no recompile)
    step, _, _ = trainer.make_steps(graphdef, train_state, frozen_state, tx, 0.5, mesh)
    emb = jnp.asarray(rng.standard_normal((b, g, g, c), np.float32))
    args = lambda: (emb, jnp.asarray(box), jnp.asarray(target), jnp.ones((b,), jnp.float32))
    run = lambda p, o: step(p, o, frozen, *args())
  else:
    trainable = image_trainer.prepare_model(model, config)
    graphdef, train_state, frozen_state = nnx.split(model, trainable, ...)
    params = jax.device_put(nnx.to_pure_dict(train_state), rep)
    frozen = jax.device_put(nnx.to_pure_dict(frozen_state), rep)
    tx = trainer.make_optimizer(config, 1000)
    opt = jax.device_put(tx.init(params), rep)  # as the step returns it (no recompile)
    step = image_trainer.make_image_steps(graphdef, train_state, frozen_state, tx, config,
                                          mesh, s)
    batch = {"pixels": jnp.asarray(rng.standard_normal((b, s, s, 3), np.float32)),
             "target": jnp.asarray(target), "valid": jnp.ones((b, m, m), jnp.float32),
             "box": jnp.asarray(box)}
    run = lambda p, o: step(p, o, frozen, batch, jax.random.PRNGKey(0))
  trainable_n, opt_n = _size(params), _size(opt)
  carry = [params, opt]

  def one_step():  # the state carries over, as in training
    carry[0], carry[1], loss = run(*carry)
    jax.block_until_ready(loss)

  t = timed(one_step, _STEPS.value)
  compile_s, med, times = t["first_s"], t["median_s"], t["times_s"]
  return {"mode": mode, "remat": _remat(mode, config), "compile_and_first_step_s": compile_s,
          "step_s": med, "steps_per_s": 1.0 / med, "trainable": trainable_n,
          "optimizer_state": opt_n, "times": times}


def main(argv):
  del argv
  print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), "
        f"load {os.getloadavg()[0]:.1f}; preset {_PRESET.value}, batch {_BATCH.value}")
  if _MEMORY.value:
    from simsam_jax.training import image_trainer  # pylint: disable=import-outside-toplevel
    print("mode  remat  arguments(GiB)  temporaries(GiB)  peak(GiB)  (XLA's compiled estimate)")
    for mode in _MODES.value:
      if mode != "decoder":
        config = _config(mode)
        r = image_trainer.compiled_step_memory(config, _BATCH.value)
        print(f"{mode:5s} {_remat(mode, config):5s} {r['argument_bytes'] / 2**30:15.2f} "
              f"{r['temp_bytes'] / 2**30:17.2f} {r['peak_bytes'] / 2**30:10.2f}", flush=True)
    return
  print("mode     remat  compile+1st(s)  step(s)  steps/s  trainable  optimizer_state")
  for mode in _MODES.value:
    r = time_mode(mode)
    print(f"{r['mode']:8s} {r['remat']:5s} {r['compile_and_first_step_s']:14.1f} "
          f"{r['step_s']:8.3f} {r['steps_per_s']:8.3f} {r['trainable']:10d} {r['optimizer_state']:16d}",
          flush=True)


if __name__ == "__main__":
  app.run(main)
