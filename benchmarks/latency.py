r"""Latency of SAM and SimSAM (JAX) vs the published PyTorch data flow.

  python benchmarks/latency.py                      # vit_b, K in {1,10,50,100,200}
  python benchmarks/latency.py --preset=tiny_1024 --ks=1,50 --repeats=3

Not a test: prints median wall times (after warm-up, compilation measured
apart) on the current JAX backend, and, when torch and transformers are
installed, the published PyTorch data flow on the same machine in the same
run, with our/their ratios. Weights are random (timing does not depend on
them); the input is the synthetic phantom at 256 x 256 (the paper's
protocol), i.e. a 1024 x 1024 model input. `--precision=bfloat16` times the
JAX model in mixed precision; `--batch=B` adds SimSAM on B images per device
call (per-image time).

Stages (JAX): encode; SAM = encode + box-only decode + mask at the input
size, fused; SimSAM = encode + the whole method, fused in one jit; and the
SimSAM stages timed separately (first decode, simulate + decode,
aggregate). PyTorch (Hugging Face SamModel, `torch_flows.py`): (a) `authors`,
the published flow (float32, host-side post-processing and top-K clicks, the
K prompts decoded with the embedding repeated K times, IoU aggregation);
(b) `authors_bf16`, the same under bf16 autocast; (c) `strong`, SDPA, bf16
weights, `torch.compile` on the encoder (GPU only), the K prompts as one
point batch, everything on the device.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from simsam_jax import processing, synthetic  # noqa: E402
from simsam_jax.modeling import build_sam, get_preset  # noqa: E402
from simsam_jax.simsam import SimSam, SimSamConfig, pipeline  # noqa: E402
from timing import compile_ms, median_ms  # noqa: E402

_PRESET = flags.DEFINE_string("preset", "vit_b", "SAM preset.")
_KS = flags.DEFINE_list("ks", ["1", "10", "50", "100", "200"], "Values of K.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repetitions (median reported).")
_TORCH = flags.DEFINE_list(
    "torch_flows", ["authors", "authors_bf16", "strong"],
    "PyTorch flows of torch_flows.py to time beside JAX when torch and transformers are "
    "installed (empty: none).")
_PRECISION = flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16"],
                               "Compute precision of the JAX model.")
_BATCH = flags.DEFINE_integer("batch", 1, "Also time SimSAM on this many images per call.")
_SIZE = flags.DEFINE_integer("size", 256, "Side of the (square) input image.")


def jax_timings(model, config, image, box, ks, repeats):
  pixels, info = processing.preprocess(image, config.image_size)
  pixels = jnp.asarray(pixels)
  box_j = jnp.asarray(box, jnp.float32)
  rows = {}
  engine = SimSam(model, SimSamConfig(k=int(ks[0])))
  state, stages = engine.state, engine.stages
  from flax import nnx
  graphdef = engine.graphdef

  def sam(state, pixels, box):
    model = nnx.merge(graphdef, state)
    emb = model.encode_image(pixels[None])[0]
    box_model = pipeline.to_model_frame(box.reshape(2, 2), info).reshape(4)
    low, _ = pipeline.first_decode(model, emb, box_model)
    return pipeline.low_res_to_original(low, info, config.mask_input_size) > 0

  sam_jit = jax.jit(sam)
  rows["compile: encode"] = compile_ms(stages.encode, state, pixels)
  rows["compile: SAM (fused)"] = compile_ms(sam_jit, state, pixels, box_j)
  rows["encode"] = median_ms(lambda: stages.encode(state, pixels).block_until_ready(), repeats)
  rows["SAM (encode + decode + mask)"] = median_ms(
      lambda: sam_jit(state, pixels, box_j).block_until_ready(), repeats)
  emb = stages.encode(state, pixels)
  first_low, first_iou = stages.first(state, emb, box_j, info=info)
  rows["first decode"] = median_ms(
      lambda: stages.first(state, emb, box_j, info=info)[0].block_until_ready(), repeats)
  key = jax.random.key(0)
  for k in ks:
    engine = SimSam(model, SimSamConfig(k=int(k)))
    st = engine.stages
    rows[f"compile: SimSAM K={k} (fused)"] = compile_ms(
        engine._full, state, pixels, box_j, key, None, info=info)
    rows[f"SimSAM K={k} (fused)"] = median_ms(
        lambda: engine.run(pixels, box, info).mask.block_until_ready(), repeats)
    rows[f"  simulate + decode K={k}"] = median_ms(
        lambda: st.simulate_and_decode(state, emb, box_j, first_low, key, None,
                                       info=info)[2].block_until_ready(), repeats)
    clicks, labels, cand, iou = st.simulate_and_decode(state, emb, box_j, first_low, key,
                                                        None, info=info)
    rows[f"  aggregate K={k}"] = median_ms(
        lambda: st.aggregate(cand, iou, first_low, first_iou, clicks, labels,
                             info=info).mask.block_until_ready(),
        repeats)
  return rows


def torch_timings(config, image, box, ks, repeats, flows):
  """{flow: {row: ms}} for the PyTorch flows of `torch_flows` (same rows as JAX)."""
  import torch_flows
  pixels, info = processing.preprocess(image, config.image_size)
  out = {}
  for name in flows:
    flow = torch_flows.Flow(name, config, pixels[None], np.asarray(box)[None], info)
    rows = {"encode": median_ms(flow.encode, repeats),
            "SAM (encode + decode + mask)": median_ms(flow.sam, repeats)}
    for k in ks:
      rows[f"SimSAM K={k} (fused)"] = median_ms(lambda: flow.simsam(int(k)), repeats)
    out[name] = rows
  return out


def batch_timings(model, config, ks, batch, repeats):
  """Per-image ms of SAM + SimSAM on `batch` phantoms in one device call."""
  data = [synthetic.phantom(_SIZE.value, _SIZE.value, seed=i) for i in range(batch)]
  pre = [processing.preprocess(img, config.image_size) for img, _, _ in data]
  pixels, info = np.stack([p for p, _ in pre]), pre[0][1]
  boxes = np.stack([b for _, _, b in data])
  rows = {}
  for k in ks:
    engine = SimSam(model, SimSamConfig(k=int(k)))
    rows[f"SimSAM K={k}, batch {batch} (per image)"] = median_ms(
        lambda: engine.run_batch(pixels, boxes, info).mask.block_until_ready(),
        repeats) / batch
  return rows


def main(argv):
  del argv
  config = get_preset(_PRESET.value)
  image, _, box = synthetic.phantom(_SIZE.value, _SIZE.value, seed=0)
  ks = [int(k) for k in _KS.value]
  dev = jax.devices()[0]
  print(f"# simsam_jax latency: preset {_PRESET.value}, input {_SIZE.value}x{_SIZE.value} -> "
        f"{config.image_size}, precision {_PRECISION.value}, median of {_REPEATS.value}")
  print(f"# jax {jax.__version__} on {dev.platform} ({dev.device_kind}), "
        f"{len(jax.devices())} device(s); host {platform.processor() or platform.machine()}")
  model = build_sam(config, seed=0, dtype=_PRECISION.value)
  ours = jax_timings(model, config, image, box, ks, _REPEATS.value)
  if _BATCH.value > 1:
    ours.update(batch_timings(model, config, ks, _BATCH.value, _REPEATS.value))
  theirs = {}
  have_torch = (importlib.util.find_spec("torch") is not None
                and importlib.util.find_spec("transformers") is not None)
  flows = [f for f in _TORCH.value if f] if have_torch else []
  if flows:
    import torch
    theirs = torch_timings(config, image, box, ks, _REPEATS.value, flows)
    print(f"# PyTorch {torch.__version__} (transformers SamModel) on "
          f"{'cuda: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}, "
          f"{torch.get_num_threads()} threads; flows: {', '.join(flows)}")
  print("\n| stage | JAX ms |" + "".join(f" {f} ms | JAX / {f} |" for f in flows))
  print("|---|---:|" + "---:|---:|" * len(flows))
  for name, ms in ours.items():
    cells = ""
    for f in flows:
      t = theirs[f].get(name)
      cells += f" {'' if t is None else f'{t:.1f}'} | {'' if t is None else f'{ms / t:.2f}'} |"
    print(f"| {name} | {ms:.1f} |{cells}")
  sam = ours["SAM (encode + decode + mask)"]
  print()
  for k in ks:
    line = f"SimSAM K={k} / SAM (JAX): {ours[f'SimSAM K={k} (fused)'] / sam:.2f}"
    for f in flows:
      line += (f"; {f} SimSAM K={k} / SAM: "
               f"{theirs[f][f'SimSAM K={k} (fused)'] / theirs[f]['SAM (encode + decode + mask)']:.2f}")
    print(line)


if __name__ == "__main__":
  app.run(main)
