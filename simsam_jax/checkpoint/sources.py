"""Reading SAM checkpoints as distributed, and inferring their architecture.

Formats:
  official_pth     the official `sam_vit_{b,l,h}_*.pth` (a pickled
                   `state_dict`); needs torch, read with `weights_only=True`.
  hf_safetensors   a Hugging Face `model.safetensors` file.
  hf_folder        a Hugging Face model folder: `config.json` and
                   `model.safetensors` (or sharded `model-*.safetensors` with
                   `model.safetensors.index.json`).

The format is detected from the path and the tensor names, the architecture
from the tensors (depth, width, heads, global blocks, ...) or, for a folder,
from `config.json` (then checked against the tensors by the converter).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Any, Optional

import numpy as np

from simsam_jax.checkpoint.key_tables import HUGGING_FACE, OFFICIAL, KeyTable
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
  format: str  # official_pth | hf_safetensors | hf_folder
  tensors: dict[str, np.ndarray]
  hf_config: Optional[dict[str, Any]]
  sha256: str

  @property
  def table(self) -> KeyTable:
    return OFFICIAL if self.format == "official_pth" else HUGGING_FACE


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
  # A .bin or .pth may hold Hugging Face names (pytorch_model.bin); decide by keys.
  if fmt == "official_pth" and any(k.startswith("vision_encoder.") for k in tensors):
    fmt = "hf_pth"
  if fmt in ("hf_safetensors", "hf_folder", "hf_pth"):
    if not any(k.startswith("vision_encoder.") for k in tensors):
      raise CheckpointError(path, ["no Hugging Face SAM tensors (vision_encoder.*) found"])
  elif not any(k.startswith("image_encoder.") for k in tensors):
    raise CheckpointError(path, ["no SAM tensors (image_encoder.* or vision_encoder.*) found"])
  return SourceCheckpoint(path=path, format=fmt, tensors=tensors,
                          hf_config=hf_config, sha256=sha)


def _indices(tensors, pattern: str) -> list[int]:
  return sorted({int(m.group(1)) for k in tensors
                 if (m := re.match(pattern, k))})


def infer_config(src: SourceCheckpoint) -> SamConfig:
  """Architecture of a checkpoint, from config.json if present, else tensors.

  The two-way transformer's head count is not recorded in any tensor shape;
  without a config.json it is taken as 8, the value of every released SAM.
  """
  if src.hf_config is not None:
    return config_from_hf(src.hf_config, src.path)
  t = src.tensors
  official = src.format == "official_pth"
  n = {  # tensor names of the two layouts
      "patch": "image_encoder.patch_embed.proj.weight" if official
               else "vision_encoder.patch_embed.projection.weight",
      "pos": "image_encoder.pos_embed" if official else "vision_encoder.pos_embed",
      "blocks": r"image_encoder\.blocks\.(\d+)\." if official
                else r"vision_encoder\.layers\.(\d+)\.",
      "block": "image_encoder.blocks.{}." if official else "vision_encoder.layers.{}.",
      "neck": "image_encoder.neck.0.weight" if official else "vision_encoder.neck.conv1.weight",
      "mask_in": "prompt_encoder.mask_downscaling.3.weight" if official
                 else "prompt_encoder.mask_embed.conv2.weight",
      "iou": r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\.",
  }
  try:
    dim, _, patch, _ = t[n["patch"]].shape
    grid = t[n["pos"]].shape[1]
    blocks = _indices(t, n["blocks"])
    rel = [t[n["block"].format(i) + "attn.rel_pos_h"].shape for i in blocks]
    head_dim = rel[0][1]
    global_idx = tuple(i for i, s in zip(blocks, rel) if s[0] == 2 * grid - 1)
    windows = {(s[0] + 1) // 2 for s in rel if s[0] != 2 * grid - 1}
    if len(windows) > 1:
      raise CheckpointError(src.path, [f"windowed blocks disagree on window size: {sorted(windows)}"])
    mlp_dim = t[n["block"].format(blocks[0]) + "mlp.lin1.weight"].shape[0]
    embed = t[n["neck"]].shape[0]
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
  try:
    return SamConfig(
        image_size=grid * patch, patch_size=patch, encoder_dim=dim,
        encoder_depth=len(blocks), encoder_num_heads=dim // head_dim,
        encoder_mlp_dim=mlp_dim,
        encoder_window_size=windows.pop() if windows else 0,
        encoder_global_attn_indexes=global_idx, prompt_embed_dim=embed,
        mask_in_chans=mask_in, decoder_depth=len(dec_layers), decoder_num_heads=8,
        decoder_mlp_dim=dec_mlp, attention_downsample_rate=embed // internal,
        num_multimask_outputs=mask_tokens - 1, iou_head_depth=iou_depth,
        iou_head_hidden_dim=iou_hidden,
        transformer_layer_norm_eps=1e-5 if official else 1e-6)
  except ValueError as e:
    raise CheckpointError(src.path, [f"inconsistent architecture: {e}"]) from e


def config_from_hf(cfg: dict[str, Any], path: str = "config.json") -> SamConfig:
  """SamConfig from a Hugging Face `SamConfig` dict (config.json)."""
  try:
    v, p, m = cfg["vision_config"], cfg["prompt_encoder_config"], cfg["mask_decoder_config"]
    dim = v.get("hidden_size", 768)
    mlp_dim = v.get("mlp_dim") or int(dim * v.get("mlp_ratio", 4.0))
    return SamConfig(
        image_size=v.get("image_size", 1024), patch_size=v.get("patch_size", 16),
        encoder_dim=dim, encoder_depth=v.get("num_hidden_layers", 12),
        encoder_num_heads=v.get("num_attention_heads", 12), encoder_mlp_dim=mlp_dim,
        encoder_window_size=v.get("window_size", 14),
        encoder_global_attn_indexes=tuple(v.get("global_attn_indexes", (2, 5, 8, 11))),
        encoder_layer_norm_eps=v.get("layer_norm_eps", 1e-6),
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
