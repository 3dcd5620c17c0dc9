"""Reading SAM checkpoints as distributed, and inferring their architecture.

Formats:
  official_pth     the official `sam_vit_{b,l,h}_*.pth` (a pickled
                   `state_dict`); needs torch, read with `weights_only=True`.
  hf_safetensors   a Hugging Face `model.safetensors` file.
  hf_folder        a Hugging Face model folder: `config.json` and
                   `model.safetensors` (or sharded `model-*.safetensors` with
                   `model.safetensors.index.json`).

The container format is detected from the path; the image-encoder family
and the naming convention ("official" or "hugging_face") from the tensor
names, by asking each family registered in `simsam_jax.modeling.encoders`
(its `detect` hook); the architecture from the tensors (the family's `infer`
hook for the encoder; the decoder here) or, for a folder, from
`config.json` (then checked against the tensors by the converter).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Any, Optional

import numpy as np

from simsam_jax.checkpoint.key_tables import KeyTable, key_table
from simsam_jax.modeling import encoders
from simsam_jax.modeling.config import SamConfig


class CheckpointError(ValueError):
  """A checkpoint that cannot be converted; `problems` lists every reason."""

  def __init__(self, source: str, problems: list[str]):
    self.source = source
    self.problems = list(problems)
    lines = "\n".join(f"  - {p}" for p in self.problems)
    super().__init__(
        f"Checkpoint {source}: {len(self.problems)} problem(s):\n{lines}")


@dataclasses.dataclass
class SourceCheckpoint:
  path: str
  format: str  # official_pth | hf_pth | hf_safetensors | hf_folder
  tensors: dict[str, np.ndarray]
  hf_config: Optional[dict[str, Any]]
  sha256: str
  encoder: str = "vit"  # registered image-encoder family (modeling.encoders)
  naming: str = "official"  # tensor names: "official" | "hugging_face"

  @property
  def table(self) -> KeyTable:
    family = encoders.get_encoder(self.encoder)
    return key_table(family.rules(self.naming), self.naming, family.name)


def sha256_of(paths: list[str]) -> str:
  h = hashlib.sha256()
  for p in sorted(paths):
    with open(p, "rb") as f:
      for chunk in iter(lambda: f.read(1 << 22), b""):
        h.update(chunk)
  return h.hexdigest()


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file
  try:
    return dict(load_file(path))
  except Exception as e:  # truncated or not a safetensors file
    raise CheckpointError(path, [f"unreadable safetensors file ({type(e).__name__}: {e})"]) from e


def _read_pth(path: str) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError as e:
    raise CheckpointError(path, [
        "reading an official .pth checkpoint needs torch "
        "(pip install 'simsam_jax[torch]'); Hugging Face safetensors do not"]) from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:
    raise CheckpointError(path, [f"unreadable PyTorch checkpoint ({type(e).__name__}: {e})"]) from e
  if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
    obj = obj["state_dict"]
  if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
    raise CheckpointError(path, ["not a state_dict of tensors"])
  return {k: v.detach().to(torch.float32 if v.is_floating_point() else v.dtype).numpy()
          for k, v in obj.items()}


def read_checkpoint(path: str) -> SourceCheckpoint:
  """Reads a checkpoint in any supported format; raises CheckpointError."""
  if not os.path.exists(path):
    raise CheckpointError(path, ["no such file or directory"])
  hf_config = None
  if os.path.isdir(path):
    cfg = os.path.join(path, "config.json")
    single = os.path.join(path, "model.safetensors")
    shards = sorted(f for f in os.listdir(path)
                    if re.fullmatch(r"model-\d+-of-\d+\.safetensors", f))
    problems = []
    if not os.path.isfile(cfg):
      problems.append(f"folder has no config.json ({cfg})")
    if os.path.isfile(single):
      files = [single]
    elif shards:
      files = [os.path.join(path, f) for f in shards]
    else:
      files = []
      problems.append(f"folder has no model.safetensors nor model-*-of-*.safetensors ({path})")
    if problems:
      raise CheckpointError(path, problems)
    try:
      with open(cfg) as f:
        hf_config = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise CheckpointError(path, [f"unreadable config.json ({e})"]) from e
    tensors = {}
    for f in files:
      tensors.update(_read_safetensors(f))
    fmt, sha = "hf_folder", sha256_of(files)
  else:
    with open(path, "rb") as f:
      head = f.read(8)
    if len(head) < 8:
      raise CheckpointError(path, ["file is empty or truncated"])
    if path.endswith(".safetensors"):
      tensors, fmt = _read_safetensors(path), "hf_safetensors"
    elif head[:2] == b"PK" or path.endswith((".pth", ".pt", ".bin")):
      tensors, fmt = _read_pth(path), "official_pth"
    else:
      raise CheckpointError(path, [
          "unknown checkpoint format: expected an official SAM .pth, a Hugging "
          "Face model.safetensors, or a Hugging Face model folder"])
    sha = sha256_of([path])
  tensors = {k: np.asarray(v) for k, v in tensors.items()}
  hf_container = fmt in ("hf_safetensors", "hf_folder")
  detected = encoders.detect_family(tensors)
  if detected is not None and hf_container and detected[1] != "hugging_face":
    detected = None
  if detected is None:
    what = ("no Hugging Face SAM tensors (vision_encoder.*) found" if hf_container
            else "no SAM tensors (image_encoder.* or vision_encoder.*) found")
    raise CheckpointError(path, [
        f"{what}: no registered image encoder family recognises the tensor names "
        f"(registered: {', '.join(sorted(encoders.ENCODERS))})"])
  family, naming = detected
  # A .bin or .pth may hold Hugging Face names (pytorch_model.bin).
  if fmt == "official_pth" and naming == "hugging_face":
    fmt = "hf_pth"
  return SourceCheckpoint(path=path, format=fmt, tensors=tensors, hf_config=hf_config,
                          sha256=sha, encoder=family.name, naming=naming)


def _indices(tensors, pattern: str) -> list[int]:
  return sorted({int(m.group(1)) for k in tensors
                 if (m := re.match(pattern, k))})


def infer_config(src: SourceCheckpoint) -> SamConfig:
  """Architecture of a checkpoint, from config.json if present, else tensors.

  The two-way transformer's head count is not recorded in any tensor shape;
  without a config.json it is taken as 8, the value of every released SAM.
  """
  if src.hf_config is not None:
    return config_from_hf(src.hf_config, src.path, src.encoder)
  t = src.tensors
  official = src.naming == "official"
  family = encoders.get_encoder(src.encoder)
  n = {  # decoder tensor names of the two conventions
      "mask_in": "prompt_encoder.mask_downscaling.3.weight" if official
                 else "prompt_encoder.mask_embed.conv2.weight",
      "iou": r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\.",
  }
  try:
    encoder, image_size = family.infer(t, src.naming)
    embed = t["prompt_encoder.no_mask_embed.weight"].shape[1]
    mask_in = t[n["mask_in"]].shape[0]
    dec_layers = _indices(t, r"mask_decoder\.transformer\.layers\.(\d+)\.")
    dec_mlp = t["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]
    internal = t["mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight"].shape[0]
    mask_tokens = t["mask_decoder.mask_tokens.weight"].shape[0]
    if official:
      iou_layers = _indices(t, n["iou"])
      iou_depth = len(iou_layers)
      iou_hidden = t["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0]
    else:
      iou_depth = 2 + len(_indices(t, n["iou"]))
      iou_hidden = t["mask_decoder.iou_prediction_head.proj_in.weight"].shape[0]
  except KeyError as e:
    raise CheckpointError(src.path, [
        f"cannot infer the architecture: tensor {e.args[0]!r} is missing"]) from e
  except ValueError as e:
    raise CheckpointError(src.path, [f"cannot infer the architecture: {e}"]) from e
  try:
    return SamConfig(
        image_size=image_size or SamConfig.image_size, encoder=encoder,
        prompt_embed_dim=embed,
        mask_in_chans=mask_in, decoder_depth=len(dec_layers), decoder_num_heads=8,
        decoder_mlp_dim=dec_mlp, attention_downsample_rate=embed // internal,
        num_multimask_outputs=mask_tokens - 1, iou_head_depth=iou_depth,
        iou_head_hidden_dim=iou_hidden,
        transformer_layer_norm_eps=1e-5 if official else 1e-6)
  except ValueError as e:
    raise CheckpointError(src.path, [f"inconsistent architecture: {e}"]) from e


def config_from_hf(cfg: dict[str, Any], path: str = "config.json",
                   encoder: str = "vit") -> SamConfig:
  """SamConfig from a Hugging Face `SamConfig` dict (config.json).

  `encoder` is the image-encoder family, whose `from_hf` hook reads
  `vision_config`.
  """
  family = encoders.get_encoder(encoder)
  if family.from_hf is None:
    raise CheckpointError(path, [f"the {encoder!r} image encoder family has no "
                                 "Hugging Face config reader"])
  try:
    v, p, m = cfg["vision_config"], cfg["prompt_encoder_config"], cfg["mask_decoder_config"]
    vision, image_size = family.from_hf(v)
    return SamConfig(
        image_size=image_size, encoder=vision,
        prompt_embed_dim=v.get("output_channels", 256),
        mask_in_chans=p.get("mask_input_channels", 16),
        decoder_depth=m.get("num_hidden_layers", 2),
        decoder_num_heads=m.get("num_attention_heads", 8),
        decoder_mlp_dim=m.get("mlp_dim", 2048),
        attention_downsample_rate=m.get("attention_downsample_rate", 2),
        num_multimask_outputs=m.get("num_multimask_outputs", 3),
        iou_head_depth=m.get("iou_head_depth", 3),
        iou_head_hidden_dim=m.get("iou_head_hidden_dim", 256),
        transformer_layer_norm_eps=m.get("layer_norm_eps", 1e-6))
  except (KeyError, TypeError, ValueError) as e:
    raise CheckpointError(path, [f"config.json is not a SAM config ({type(e).__name__}: {e})"]) from e


def config_to_hf(config: SamConfig) -> dict[str, Any]:
  """The Hugging Face `SamConfig` dict (config.json fields) of `config`.

  The inverse of `config_from_hf`: `config_from_hf(config_to_hf(c)) == c`
  for every config whose LayerNorm epsilons Hugging Face can express (the
  final attention norm is 1e-5 and the mask-prompt / upscaling norms 1e-6
  in both implementations). The encoder family's `to_hf` hook writes
  `vision_config`. `transformer_layer_norm_eps` becomes the mask decoder's
  `layer_norm_eps` as it is: the official architecture's 1e-5 (the presets)
  stays 1e-5, where a Hugging Face checkpoint as distributed has 1e-6.

  Raises:
    ValueError when the encoder family has no Hugging Face port.
  """
  family = encoders.family_of(config.encoder)
  if family.to_hf is None:
    raise ValueError(f"the {family.name!r} image encoder family has no "
                     "Hugging Face config writer")
  c = config
  return dict(
      vision_config=family.to_hf(c.encoder, c.image_size, c.prompt_embed_dim),
      prompt_encoder_config=dict(
          hidden_size=c.prompt_embed_dim, image_size=c.image_size,
          patch_size=c.encoder.stride, mask_input_channels=c.mask_in_chans,
          layer_norm_eps=1e-6),
      mask_decoder_config=dict(
          hidden_size=c.prompt_embed_dim, mlp_dim=c.decoder_mlp_dim,
          num_hidden_layers=c.decoder_depth, num_attention_heads=c.decoder_num_heads,
          attention_downsample_rate=c.attention_downsample_rate,
          num_multimask_outputs=c.num_multimask_outputs,
          iou_head_depth=c.iou_head_depth, iou_head_hidden_dim=c.iou_head_hidden_dim,
          layer_norm_eps=c.transformer_layer_norm_eps))


def hf_sam_config(config: SamConfig, **kwargs):
  """A `transformers.SamConfig` of the architecture `config` (`config_to_hf`).

  `kwargs` go to `transformers.SamConfig` (e.g. `attn_implementation`).
  Needs transformers (not a dependency of simsam_jax; the test extra has it).
  """
  from transformers import SamConfig as HFSamConfig
  return HFSamConfig(**config_to_hf(config), **kwargs)
