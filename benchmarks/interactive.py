r"""Latency of the click protocol (N rounds) vs SimSAM K=50, encoder included.

  python benchmarks/interactive.py --repeats=3         # vit_b, N = 20, K = 50
  python benchmarks/interactive.py --preset=tiny --rounds=3 --k=3 --repeats=1

Not a test: prints median wall times (after warm-up; compilation measured
apart) on the current JAX backend for one image (the synthetic phantom at
256 x 256, the paper's protocol, so a 1024 x 1024 input for ViT-B), random
weights (timing does not depend on them):

* SimSAM K (fused `SimSam.run`: encoder + box decode + K-prompt decode +
  aggregation);
* N rounds of each start alone (`InteractiveSam.run`, one jit: encoder once,
  then a `lax.scan` of N rounds of click + decode), and all starts in one
  program;

and the goal's ratio: N rounds of the box start / SimSAM K (goal <= 1.25).
"""

from __future__ import annotations

import platform

import jax
import jax.numpy as jnp
from absl import app, flags

# --preset, --repeats and --size are latency.py's flags (same meaning).
from latency import _PRESET, _REPEATS, _SIZE
from timing import compile_ms, median_ms
from simsam_jax import processing, synthetic
from simsam_jax.modeling import build_sam, get_preset
from simsam_jax.simsam import SimSam, SimSamConfig
from simsam_jax.simsam.interactive import STARTS, InteractiveConfig, InteractiveSam

_ROUNDS = flags.DEFINE_integer("rounds", 20, "Clicks per image and start (N).")
_K = flags.DEFINE_integer("k", 50, "SimSAM's K (baseline and the simsam start).")
_STARTS = flags.DEFINE_list("starts", list(STARTS), "Starts timed one by one (and, when "
                            "several, all together in one program).")


def programs(starts):
  """The start tuples timed: each alone, then all in one program."""
  return [(s,) for s in starts] + ([tuple(starts)] if len(starts) > 1 else [])


def timings(config, rounds, k, repeats, size, starts):
  """{row name: ms}; each row is also printed as soon as it is measured."""
  model = build_sam(config, seed=0)
  image, mask, box = synthetic.phantom(size, size, seed=0)
  pixels, info = processing.preprocess(image, config.image_size)
  pixels = jnp.asarray(pixels)
  key = jax.random.key(0)
  rows = _PrintingDict()
  simsam = SimSam(model, SimSamConfig(k=k))
  rows[f"compile: SimSAM K={k}"] = compile_ms(
      simsam._full, simsam.state, pixels, jnp.asarray(box, jnp.float32), key, None, info=info)
  rows[f"SimSAM K={k} (encoder included)"] = median_ms(
      lambda: simsam.run(pixels, box, info).mask.block_until_ready(), repeats)
  for group in programs(starts):
    engine = InteractiveSam(model, InteractiveConfig(num_rounds=rounds, starts=group,
                                                     simsam=SimSamConfig(k=k)))
    name = "+".join(group)
    args = (engine.state, pixels, jnp.asarray(box, jnp.float32), jnp.asarray(mask), key)
    rows[f"compile: {rounds} rounds, {name}"] = compile_ms(engine._full, *args, info=info)
    rows[f"{rounds} rounds, {name} (encoder included)"] = median_ms(
        lambda: jax.block_until_ready(engine.run(pixels, box, mask, info, key)), repeats)
  return rows


class _PrintingDict(dict):
  """Prints each row as it is set (a long CPU run shows its progress)."""

  def __setitem__(self, name, ms):
    print(f"# {name}: {ms:.1f} ms", flush=True)
    super().__setitem__(name, ms)


def main(argv):
  del argv
  config = get_preset(_PRESET.value)
  rounds, k = _ROUNDS.value, _K.value
  dev = jax.devices()[0]
  print(f"# click protocol latency: preset {_PRESET.value}, input {_SIZE.value}x{_SIZE.value}"
        f" -> {config.image_size}, median of {_REPEATS.value}")
  print(f"# jax {jax.__version__} on {dev.platform} ({dev.device_kind}), "
        f"{len(jax.devices())} device(s); host {platform.processor() or platform.machine()}")
  rows = timings(config, rounds, k, _REPEATS.value, _SIZE.value, _STARTS.value)
  print("\n| stage | ms |")
  print("|---|---:|")
  for name, ms in rows.items():
    print(f"| {name} | {ms:.1f} |")
  base = rows[f"SimSAM K={k} (encoder included)"]
  print()
  for starts in programs(_STARTS.value):
    name = "+".join(starts)
    print(f"{rounds} rounds {name} / SimSAM K={k}: "
          f"{rows[f'{rounds} rounds, {name} (encoder included)'] / base:.2f}")


if __name__ == "__main__":
  app.run(main)
