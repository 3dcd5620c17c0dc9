"""PyTorch reference SAMs for parity tests: the official `segment_anything`
modeling code and Hugging Face `transformers.SamModel`, built from a
`SamConfig` and filled with the SAME random weights.

Random SAM weights give logits within +-0.01 (masks become float noise), so
every tensor is randomised (PyTorch leaves positional tables at zero) and the
hypernetwork output layers are scaled up to give decisive masks.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
import types

import numpy as np
import torch

from simsam_jax.checkpoint import hf_sam_config
from simsam_jax.modeling.config import SamConfig


def import_official_modeling():
  """Imports `segment_anything.modeling` without torchvision.

  The package's `__init__` imports the predictor, which needs torchvision;
  registering an empty package module first lets the modeling code import.
  """
  if "segment_anything" not in sys.modules:
    # (also when another test left only `segment_anything.modeling` behind:
    # importing a further submodule would then run the real `__init__`)
    spec = importlib.util.find_spec("segment_anything")
    if spec is None:
      raise ImportError("segment-anything is not installed")
    pkg = types.ModuleType("segment_anything")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec  # keeps importlib.util.find_spec working for others
    sys.modules["segment_anything"] = pkg
  if "segment_anything.modeling" in sys.modules:
    return sys.modules["segment_anything.modeling"]
  import segment_anything.modeling as modeling  # noqa: E402
  return modeling


def official_sam(config: SamConfig):
  """Official `Sam` module of the given architecture (eval mode)."""
  from functools import partial
  m = import_official_modeling()
  c = config
  v = config.encoder  # a ViTConfig
  model = m.Sam(
      image_encoder=m.ImageEncoderViT(
          depth=v.depth, embed_dim=v.dim, img_size=c.image_size,
          mlp_ratio=v.mlp_dim / v.dim,
          norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
          num_heads=v.num_heads, patch_size=v.patch_size, qkv_bias=True,
          use_rel_pos=True, global_attn_indexes=v.global_attn_indexes,
          window_size=v.window_size, out_chans=c.prompt_embed_dim),
      prompt_encoder=m.PromptEncoder(
          embed_dim=c.prompt_embed_dim,
          image_embedding_size=(c.image_embedding_size, c.image_embedding_size),
          input_image_size=(c.image_size, c.image_size), mask_in_chans=c.mask_in_chans),
      mask_decoder=m.MaskDecoder(
          num_multimask_outputs=c.num_multimask_outputs,
          transformer=m.TwoWayTransformer(
              depth=c.decoder_depth, embedding_dim=c.prompt_embed_dim,
              mlp_dim=c.decoder_mlp_dim, num_heads=c.decoder_num_heads,
              attention_downsample_rate=c.attention_downsample_rate),
          transformer_dim=c.prompt_embed_dim, iou_head_depth=c.iou_head_depth,
          iou_head_hidden_dim=c.iou_head_hidden_dim),
      pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
  assert model.image_encoder.blocks[0].mlp.lin1.out_features == v.mlp_dim
  return model.eval()


def hf_sam(config: SamConfig, transformer_eps: float = 1e-6):
  """HF `SamModel` of the architecture `config` (eager attention, eval mode).

  The two-way blocks' LayerNorm epsilon is `transformer_eps` (default 1e-6,
  Hugging Face's own value, as in a distributed HF checkpoint), not the
  official 1e-5 of the presets.
  """
  from transformers import SamModel
  hf_config = hf_sam_config(
      dataclasses.replace(config, transformer_layer_norm_eps=transformer_eps),
      attn_implementation="eager")
  return SamModel(hf_config).eval()


def randomize_(model: torch.nn.Module, seed: int, hyper_scale: float = 25.0):
  """Fills every tensor with random values, in place; returns the model.

  Matrices get N(0, 0.5/fan_in) (a gain of 0.7: with a gain of 1 these
  random networks amplify float32 rounding of their inputs ~100-fold, which
  would blur parity checks at 1e-4); LayerNorm scales 1 + N(0, 0.1); biases and
  positional tables N(0, 0.1); embeddings N(0, 1). The hypernetwork output
  layers are multiplied by `hyper_scale` so logits are decisive.
  """
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in model.state_dict().items():
      if name in ("pixel_mean", "pixel_std"):
        continue
      r = torch.randn(t.shape, generator=g, dtype=torch.float32)
      if t.ndim >= 2 and "embed" not in name.split(".")[-2:][0] and not any(
          s in name for s in ("rel_pos", "pos_embed", "token", "gaussian", "positional")):
        fan_in = int(np.prod(t.shape[1:]))
        if "upscal" in name or "output_upscaling" in name:  # (in, out, kh, kw)
          fan_in = t.shape[0]
        r = 0.7 * r / np.sqrt(fan_in)
      elif t.ndim == 1 and ("norm" in name) and name.endswith("weight"):
        r = 1.0 + 0.1 * r
      elif t.ndim == 1 or any(s in name for s in ("rel_pos", "pos_embed")):
        r = 0.1 * r
      t.copy_(r)
    for name, t in model.state_dict().items():
      last_hyper = ("output_hypernetworks_mlps" in name and
                    (".layers.2." in name or ".proj_out." in name))
      if last_hyper and name.endswith("weight"):
        t.mul_(hyper_scale)
  return model


_OFFICIAL_TO_HF = [
    ("image_encoder.", "vision_encoder."),
    ("patch_embed.proj.", "patch_embed.projection."),
    (".blocks.", ".layers."),
    ("neck.0.", "neck.conv1."), ("neck.1.", "neck.layer_norm1."),
    ("neck.2.", "neck.conv2."), ("neck.3.", "neck.layer_norm2."),
    ("mask_downscaling.0.", "mask_embed.conv1."),
    ("mask_downscaling.1.", "mask_embed.layer_norm1."),
    ("mask_downscaling.3.", "mask_embed.conv2."),
    ("mask_downscaling.4.", "mask_embed.layer_norm2."),
    ("mask_downscaling.6.", "mask_embed.conv3."),
    ("output_upscaling.0.", "upscale_conv1."),
    ("output_upscaling.1.", "upscale_layer_norm."),
    ("output_upscaling.3.", "upscale_conv2."),
    ("point_embeddings.", "point_embed."),
    ("pe_layer.positional_encoding_gaussian_matrix", "shared_embedding.positional_embedding"),
    ("norm_final_attn", "layer_norm_final_attn"),
]


def official_to_hf_state(sd: dict, config: SamConfig) -> dict:
  """Renames an official state_dict to Hugging Face names (test-side table)."""
  out = {}
  for k, v in sd.items():
    if k in ("pixel_mean", "pixel_std"):
      continue
    for a, b in _OFFICIAL_TO_HF:
      k = k.replace(a, b)
    for i in range(1, 5):
      k = k.replace(f".norm{i}.", f".layer_norm{i}.")
    for head, depth in (("output_hypernetworks_mlps", 3),
                        ("iou_prediction_head", config.iou_head_depth)):
      if head in k and ".layers." in k:
        pre, rest = k.split(".layers.")
        idx, tail = rest.split(".", 1)
        idx = int(idx)
        if idx == 0:
          k = f"{pre}.proj_in.{tail}"
        elif idx == depth - 1:
          k = f"{pre}.proj_out.{tail}"
        else:
          k = f"{pre}.layers.{idx - 1}.{tail}"
    out[k] = v
  out["shared_image_embedding.positional_embedding"] = (
      out["prompt_encoder.shared_embedding.positional_embedding"])
  return out


def balance_single_mask_(model, pixels, boxes, embeddings=None):
  """Makes the single-mask output of a random official SAM two-signed.

  Random weights give single-mask logits of one sign almost everywhere (the
  upscaled features are mostly positive after GELU). This shifts the bias of
  mask token 0's hypernetwork output layer by the least-squares `d` that
  makes the hypernetwork output orthogonal to the mean upscaled feature,
  (h_i + d) . u_i = 0, over the given images and boxes: their mean logits
  become ~0, so masks have boundaries.

  Args:
    pixels: list of (1, 3, S, S) preprocessed images.
    boxes: list of (4,) boxes in the model frame.
    embeddings: optional list of the images' (1, C, G, G) embeddings by
      `model.image_encoder` (which this does not change), to skip encoding.
  """
  captured = {}
  hooks = [
      model.mask_decoder.output_upscaling.register_forward_hook(
          lambda m, i, o: captured.__setitem__("up", o)),
      model.mask_decoder.output_hypernetworks_mlps[0].register_forward_hook(
          lambda m, i, o: captured.__setitem__("h", o)),
  ]
  hs, us = [], []
  with torch.no_grad():
    for i, (pix, box) in enumerate(zip(pixels, boxes)):
      emb = (model.image_encoder(torch.as_tensor(pix)) if embeddings is None
             else embeddings[i])
      sparse, dense = model.prompt_encoder(
          points=None, boxes=torch.as_tensor(box, dtype=torch.float32)[None], masks=None)
      model.mask_decoder(image_embeddings=emb, image_pe=model.prompt_encoder.get_dense_pe(),
                         sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                         multimask_output=False)
      hs.append(captured["h"][0].clone())
      us.append(captured["up"][0].mean(dim=(1, 2)))
    for h in hooks:
      h.remove()
    h, u = torch.stack(hs), torch.stack(us)
    residual = (h * u).sum(1, keepdim=True)
    shift = torch.linalg.lstsq(u, residual).solution[:, 0]
    model.mask_decoder.output_hypernetworks_mlps[0].layers[-1].bias.sub_(shift)
  return model


def paired_models(config: SamConfig, seed: int = 0, hyper_scale: float = 25.0,
                  balance_on=None):
  """(official Sam, HF SamModel) holding the same random weights.

  balance_on: optional (list of (1, 3, S, S) pixels, list of (4,) boxes) for
  `balance_single_mask_`, applied before the weights are copied to HF.
  """
  official = randomize_(official_sam(config), seed, hyper_scale)
  if balance_on is not None:
    balance_single_mask_(official, *balance_on)
  return official, hf_twin(official, config)


def hf_twin(official, config: SamConfig):
  """HF SamModel (`hf_sam(config)`) holding the weights of `official`."""
  hf = hf_sam(config)
  missing, unexpected = hf.load_state_dict(
      official_to_hf_state(official.state_dict(), config), strict=False)
  assert not unexpected, unexpected
  assert not missing, missing
  return hf


def save_official_pth(model, path: str) -> str:
  torch.save(model.state_dict(), path)
  return path


def save_hf_folder(model, path: str) -> str:
  model.save_pretrained(path, safe_serialization=True)
  assert os.path.isfile(os.path.join(path, "model.safetensors"))
  return path
