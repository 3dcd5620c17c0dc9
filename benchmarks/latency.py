r"""Latency of SAM and SimSAM (JAX) vs the published PyTorch data flow.

  python benchmarks/latency.py                      # vit_b, K in {1,10,50,100,200}
  python benchmarks/latency.py --preset=tiny_1024 --ks=1,50 --repeats=3

Not a test: prints median wall times (after warm-up, compilation measured
apart) on the current JAX backend, and, when torch and transformers are
installed, the published PyTorch data flow on the same machine in the same
run, with our/their ratios. Weights are random (timing does not depend on
them); the input is the synthetic phantom at 256 x 256 (the paper's
protocol), i.e. a 1024 x 1024 model input.

Stages (JAX): encode; SAM = encode + box-only decode + mask at the input
size, fused; SimSAM = encode + the whole method, fused in one jit; and the
SimSAM stages timed separately (first decode, simulate + decode,
aggregate). PyTorch (Hugging Face SamModel, as the authors' code): encode,
box-only decode, host-side post-processing and top-K clicks, the K prompts
decoded with the embedding repeated K times, IoU aggregation.
"""

from __future__ import annotations

import importlib.util
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from simsam_jax import processing, synthetic
from simsam_jax.modeling import build_sam, get_preset
from simsam_jax.simsam import SimSam, SimSamConfig, pipeline

_PRESET = flags.DEFINE_string("preset", "vit_b", "SAM preset.")
_KS = flags.DEFINE_list("ks", ["1", "10", "50", "100", "200"], "Values of K.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repetitions (median reported).")
_TORCH = flags.DEFINE_bool("torch", True, "Also time the PyTorch data flow if installed.")
_SIZE = flags.DEFINE_integer("size", 256, "Side of the (square) input image.")


def median_ms(fn, repeats):
  """Median wall time in ms of `fn()` (which must block until done)."""
  fn()  # warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append((time.perf_counter() - start) * 1e3)
  return statistics.median(times)


def compile_ms(jitted, *args, **kwargs):
  start = time.perf_counter()
  jitted.lower(*args, **kwargs).compile()
  return (time.perf_counter() - start) * 1e3


def jax_timings(config, image, box, ks, repeats):
  model = build_sam(config, seed=0)
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


def torch_timings(config, image, box, ks, repeats):
  import torch
  import torch.nn.functional as F
  from transformers import SamConfig as HFConfig, SamModel

  c = config
  hf = SamModel(HFConfig(
      vision_config=dict(hidden_size=c.encoder_dim, output_channels=c.prompt_embed_dim,
                         num_hidden_layers=c.encoder_depth,
                         num_attention_heads=c.encoder_num_heads, image_size=c.image_size,
                         patch_size=c.patch_size, window_size=c.encoder_window_size,
                         global_attn_indexes=list(c.encoder_global_attn_indexes),
                         mlp_dim=c.encoder_mlp_dim, num_pos_feats=c.prompt_embed_dim // 2),
      prompt_encoder_config=dict(hidden_size=c.prompt_embed_dim, image_size=c.image_size,
                                 patch_size=c.patch_size, mask_input_channels=c.mask_in_chans),
      mask_decoder_config=dict(hidden_size=c.prompt_embed_dim, mlp_dim=c.decoder_mlp_dim,
                               num_hidden_layers=c.decoder_depth,
                               num_attention_heads=c.decoder_num_heads,
                               iou_head_hidden_dim=c.iou_head_hidden_dim))).eval()
  pixels, info = processing.preprocess(image, c.image_size)
  pv = torch.from_numpy(pixels[None]).permute(0, 3, 1, 2).contiguous()
  h, w = info.original_size
  scale = np.array([info.resized_size[1] / w, info.resized_size[0] / h] * 2)
  box_m = torch.tensor(np.asarray(box) * scale, dtype=torch.float32)

  def sam():
    with torch.no_grad():
      emb = hf.get_image_embeddings(pv)
      out = hf(image_embeddings=emb, input_boxes=box_m[None, None], multimask_output=False)
      return emb, out.pred_masks[0, 0, 0]

  def simsam(k):
    emb, low = sam()
    with torch.no_grad():
      x = F.interpolate(low[None, None], (c.image_size, c.image_size), mode="bilinear",
                        align_corners=False)[..., :info.resized_size[0], :info.resized_size[1]]
      probs = torch.sigmoid(F.interpolate(x, (h, w), mode="bilinear", align_corners=False))[0, 0]
      # Host-side click selection, as the published code does.
      p = probs.numpy()
      err = 0.5 - np.abs(p - 0.5)
      idx = np.argsort(-err.ravel(), kind="stable")[:k]
      labels = 1 - (p.ravel()[idx] > 0.5).astype(np.int64)
      pts = np.stack([idx % w, idx // w], 1) * scale[:2]
      # The published code works at 256 x 256, where the binary first
      # prediction is already the low-res mask prompt; other sizes are
      # brought to the low-res grid for the timing.
      m = low.shape[-1]
      prompt = (probs > 0.5).float()[None, None]
      if prompt.shape[-2:] != (m, m):
        prompt = F.interpolate(prompt, (m, m), mode="nearest")
      out = hf(image_embeddings=emb.repeat(1, 1, 1, 1),
               input_points=torch.tensor(pts, dtype=torch.float32)[None, :, None],
               input_labels=torch.tensor(labels)[None, :, None],
               input_boxes=box_m[None, None].repeat(1, k, 1),
               input_masks=prompt, multimask_output=False)
      b = (out.pred_masks[0, :, 0] > 0).flatten(1).float()
      inter = b @ b.T
      area = b.sum(1)
      iou = torch.nan_to_num(inter / (area[:, None] + area[None, :] - inter), nan=0.0)
      return int(torch.argmax(iou.mean(1)))

  rows = {"encode": median_ms(lambda: hf.get_image_embeddings(pv), repeats),
          "SAM (encode + decode + mask)": median_ms(sam, repeats)}
  for k in ks:
    rows[f"SimSAM K={k} (fused)"] = median_ms(lambda: simsam(int(k)), repeats)
  return rows, torch.__version__, torch.get_num_threads()


def main(argv):
  del argv
  config = get_preset(_PRESET.value)
  image, _, box = synthetic.phantom(_SIZE.value, _SIZE.value, seed=0)
  ks = [int(k) for k in _KS.value]
  dev = jax.devices()[0]
  print(f"# simsam_jax latency: preset {_PRESET.value}, input {_SIZE.value}x{_SIZE.value} -> "
        f"{config.image_size}, median of {_REPEATS.value}")
  print(f"# jax {jax.__version__} on {dev.platform} ({dev.device_kind}), "
        f"{len(jax.devices())} device(s); host {platform.processor() or platform.machine()}")
  ours = jax_timings(config, image, box, ks, _REPEATS.value)
  theirs = {}
  have_torch = (importlib.util.find_spec("torch") is not None
                and importlib.util.find_spec("transformers") is not None)
  if _TORCH.value and have_torch:
    theirs, tv, threads = torch_timings(config, image, box, ks, _REPEATS.value)
    print(f"# PyTorch {tv} (transformers SamModel), {threads} threads, CPU")
  print("\n| stage | JAX ms | PyTorch ms | JAX / PyTorch |")
  print("|---|---:|---:|---:|")
  for name, ms in ours.items():
    t = theirs.get(name)
    ratio = f"{ms / t:.2f}" if t else ""
    print(f"| {name} | {ms:.1f} | {'' if t is None else f'{t:.1f}'} | {ratio} |")
  sam = ours["SAM (encode + decode + mask)"]
  print()
  for k in ks:
    line = f"SimSAM K={k} / SAM (JAX): {ours[f'SimSAM K={k} (fused)'] / sam:.2f}"
    if theirs:
      line += (f"; PyTorch SimSAM K={k} / SAM: "
               f"{theirs[f'SimSAM K={k} (fused)'] / theirs['SAM (encode + decode + mask)']:.2f}")
    print(line)


if __name__ == "__main__":
  app.run(main)
