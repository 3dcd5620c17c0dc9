r"""bfloat16 vs float32: how often SAM's and SimSAM's masks agree, pixel by pixel.

  python benchmarks/agreement.py --preset=vit_b --num_images=32
  python benchmarks/agreement.py --preset=tiny_1024 --num_images=4 --ks=3

Not a test (the tests check the same on the real sample images with the
PyTorch-made decisive weights, on CPU): a check to run on an accelerator,
where bfloat16 matmuls, cuDNN and XLA's GPU fusions differ from the CPU.
Images are deterministic 256 x 256 phantoms (the paper's protocol).

Random SAM weights give logits near 0 of one sign almost everywhere, so a
mask comparison would be vacuous. The model is made decisive with JAX alone:
the output layer of mask token 0's hypernetwork is scaled by `--hyper_scale`,
and its bias is shifted by the least-squares `d` that makes every image's
mean low-res logit 0. The mean logit is linear in that bias (its gradient is
the image's mean upscaled feature), so `jax.grad` gives the system. The
script prints the foreground fraction of each precision's masks, so a
vacuous comparison (all or nothing foreground) shows.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from simsam_jax import processing, synthetic  # noqa: E402
from simsam_jax.modeling import build_sam, get_preset, with_policy  # noqa: E402
from simsam_jax.simsam import SimSam, SimSamConfig, pipeline  # noqa: E402

_PRESET = flags.DEFINE_string("preset", "vit_b", "SAM preset.")
_N = flags.DEFINE_integer("num_images", 32, "Number of generated images.")
_KS = flags.DEFINE_list("ks", ["50"], "Values of K.")
_SIZE = flags.DEFINE_integer("size", 256, "Side of the generated images.")
_SCALE = flags.DEFINE_float("hyper_scale", 25.0, "Scale of the hypernetwork output layer.")


def decisive(model, pixels, boxes, info, hyper_scale: float):
  """`model` with mask token 0's hypernetwork output layer scaled and balanced.

  Args:
    pixels: (N, S, S, 3) float32 pre-processed images; boxes: (N, 4) in
      original pixels; info: their shared `processing.ImageInfo`.
  """
  layer = model.mask_decoder.output_hypernetworks_mlps[0].layers[-1]
  layer.kernel.set_value(jnp.asarray(layer.kernel[...]) * hyper_scale)
  layer.bias.set_value(jnp.asarray(layer.bias[...]) * hyper_scale)
  target = layer.bias
  graphdef, bias, rest = nnx.split(model, lambda path, v: v is target, ...)

  def mean_logit(bias, rest, pixels, box):
    m = nnx.merge(graphdef, bias, rest)
    embedding = m.encode_image(pixels[None])[0]
    low, _ = pipeline.box_only(m, embedding, box, info)
    return low.mean()

  value_and_grad = jax.jit(jax.vmap(jax.value_and_grad(mean_logit),
                                    in_axes=(None, None, 0, 0)))
  values, grads = [], []
  for i in range(0, len(pixels), 4):
    v, g = value_and_grad(bias, rest, jnp.asarray(pixels[i:i + 4]),
                          jnp.asarray(boxes[i:i + 4]))
    values.append(np.asarray(v))
    grads.append(np.asarray(jax.tree.leaves(g)[0]))
  u, v = np.concatenate(grads).astype(np.float64), np.concatenate(values).astype(np.float64)
  shift, *_ = np.linalg.lstsq(u, v, rcond=None)  # (b - d) . u_i = mean_i - d . u_i = 0
  layer.bias.set_value(layer.bias[...] - jnp.asarray(shift, jnp.float32))
  return model


def main(argv):
  del argv
  config = get_preset(_PRESET.value)
  data = [synthetic.phantom(_SIZE.value, _SIZE.value, seed=i) for i in range(_N.value)]
  pre = [processing.preprocess(img, config.image_size) for img, _, _ in data]
  pixels, info = np.stack([p for p, _ in pre]), pre[0][1]
  boxes = np.stack([np.asarray(b, np.float32) for _, _, b in data])
  model = decisive(build_sam(config, seed=0), pixels, boxes, info, _SCALE.value)
  dev = jax.devices()[0]
  print(f"# bfloat16 vs float32: preset {_PRESET.value}, {_N.value} phantoms "
        f"{_SIZE.value}x{_SIZE.value}, jax {jax.__version__} on {dev.platform} "
        f"({dev.device_kind})")
  print("\n| K | SAM agreement mean / min | SimSAM agreement mean / min | same chosen | "
        "SAM fg f32 / bf16 | SimSAM fg f32 / bf16 |")
  print("|---:|---:|---:|---:|---:|---:|")
  for k in (int(k) for k in _KS.value):
    out = {}
    for precision in ("float32", "bfloat16"):
      engine = SimSam(with_policy(model, precision), SimSamConfig(k=k))
      res = [engine.run_batch(pixels[i:i + 4], boxes[i:i + 4], info)
             for i in range(0, len(pixels), 4)]
      out[precision] = {name: np.concatenate([np.asarray(getattr(r, name)) for r in res])
                        for name in ("sam_mask", "mask", "chosen")}
    a, b = out["float32"], out["bfloat16"]
    sam = (a["sam_mask"] == b["sam_mask"]).mean(axis=(1, 2))
    sim = (a["mask"] == b["mask"]).mean(axis=(1, 2))
    same = (a["chosen"] == b["chosen"]).mean()
    print(f"| {k} | {100 * sam.mean():.2f}% / {100 * sam.min():.2f}% | "
          f"{100 * sim.mean():.2f}% / {100 * sim.min():.2f}% | {100 * same:.0f}% | "
          f"{100 * a['sam_mask'].mean():.1f}% / {100 * b['sam_mask'].mean():.1f}% | "
          f"{100 * a['mask'].mean():.1f}% / {100 * b['mask'].mean():.1f}% |")


if __name__ == "__main__":
  app.run(main)
