"""Architecture hyper-parameters of the Segment Anything Model and its presets.

A `SamConfig` fully determines the shapes of every parameter, so that the
converter can build the abstract model (`nnx.eval_shape`) and check a
checkpoint against it tensor by tensor.

Compute precision and attention implementation are run options, not
architecture: they are not fields here (presets and checkpoint sidecars
compare whole configs) but a `policy.Policy` given when a model is built or
loaded.

The image encoder's architecture is nested per encoder family
(`SamConfig.encoder`, e.g. `ViTConfig`; `simsam_jax.modeling.encoders`), and
serialised nested with its "family" key. `SamConfig.from_dict` also reads the
flat layout of checkpoints written before (`patch_size`, `encoder_dim`, ...
at the top level), which always describes a ViT.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from simsam_jax.modeling.encoders import (EncoderConfig, encoder_config_from_dict,
                                          family_of)
from simsam_jax.modeling.encoders.vit import ViTConfig

# Flat field names of the ViT before encoders were nested -> ViTConfig fields.
_LEGACY_VIT_FIELDS = {
    "patch_size": "patch_size", "encoder_dim": "dim", "encoder_depth": "depth",
    "encoder_num_heads": "num_heads", "encoder_mlp_dim": "mlp_dim",
    "encoder_window_size": "window_size",
    "encoder_global_attn_indexes": "global_attn_indexes",
    "encoder_layer_norm_eps": "layer_norm_eps"}


@dataclasses.dataclass(frozen=True)
class SamConfig:
  """SAM architecture.

  Attributes:
    image_size: side of the square, padded model input in pixels (1024).
    encoder: the image encoder's config, an `EncoderConfig` of a registered
      family (default: SAM's ViT-B, `ViTConfig()`); `image_size //
      encoder.stride` is the side of the image embedding grid (64).
    prompt_embed_dim: channels of the image embedding, the prompt tokens and
      the two-way transformer (256).
    mask_in_chans: channels of the dense mask-prompt downscaler (16).
    decoder_depth: number of two-way attention blocks (2).
    decoder_num_heads: attention heads in the two-way transformer (8).
    decoder_mlp_dim: hidden width of the two-way transformer MLPs (2048).
    attention_downsample_rate: channel reduction of the cross attentions (2).
    num_multimask_outputs: masks returned in multimask mode (3).
    iou_head_depth: layers of the IoU prediction MLP (3).
    iou_head_hidden_dim: hidden width of the IoU prediction MLP (256).
    transformer_layer_norm_eps: epsilon of the LayerNorms inside the two-way
      attention blocks. The official code uses PyTorch's default 1e-5;
      Hugging Face `SamModel` uses its config's `layer_norm_eps` (1e-6). The
      converter sets the value of the implementation a checkpoint comes from.
    final_layer_norm_eps: epsilon of the LayerNorm after the final
      token-to-image attention (1e-5 in both implementations).
  """

  image_size: int = 1024
  encoder: EncoderConfig = ViTConfig()
  prompt_embed_dim: int = 256
  mask_in_chans: int = 16
  decoder_depth: int = 2
  decoder_num_heads: int = 8
  decoder_mlp_dim: int = 2048
  attention_downsample_rate: int = 2
  num_multimask_outputs: int = 3
  iou_head_depth: int = 3
  iou_head_hidden_dim: int = 256
  transformer_layer_norm_eps: float = 1e-5
  final_layer_norm_eps: float = 1e-5

  def __post_init__(self):
    if not isinstance(self.encoder, EncoderConfig):
      raise ValueError(f"Invalid SamConfig: encoder must be an EncoderConfig, got "
                       f"{type(self.encoder).__name__}")
    family_of(self.encoder)  # registered, else ValueError naming the families
    problems = list(self.encoder.problems(self.image_size))
    internal = self.prompt_embed_dim // self.attention_downsample_rate
    if internal % self.decoder_num_heads or (
        self.prompt_embed_dim % self.decoder_num_heads):
      problems.append(
          f"prompt_embed_dim={self.prompt_embed_dim} (and its downsampled "
          f"width {internal}) must be divisible by "
          f"decoder_num_heads={self.decoder_num_heads}")
    if self.prompt_embed_dim % 8:
      problems.append(
          f"prompt_embed_dim={self.prompt_embed_dim} must be divisible by 8 "
          "(the mask upscaler divides it by 4 then 8)")
    if self.mask_in_chans % 4:
      problems.append(
          f"mask_in_chans={self.mask_in_chans} must be divisible by 4")
    if problems:
      raise ValueError("Invalid SamConfig: " + "; ".join(problems))

  @property
  def image_embedding_size(self) -> int:
    """Side of the image embedding grid (64 for 1024 / 16)."""
    return self.image_size // self.encoder.stride

  @property
  def mask_input_size(self) -> int:
    """Side of the dense mask prompt and of the low-res logits (256)."""
    return 4 * self.image_embedding_size

  @property
  def num_mask_tokens(self) -> int:
    return self.num_multimask_outputs + 1

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready dict, the encoder nested with its "family" key."""
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    d["encoder"] = self.encoder.to_dict()
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "SamConfig":
    """Inverse of `to_dict`; also reads the flat layout written before.

    Flat ViT fields (`patch_size`, `encoder_dim`, ...; missing ones take the
    ViT-B defaults) become `encoder=ViTConfig(...)`; mixing them with a
    nested "encoder" is refused.
    """
    d = dict(d)
    legacy = {new: d.pop(old) for old, new in _LEGACY_VIT_FIELDS.items() if old in d}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"Unknown SamConfig fields: {unknown}")
    if legacy and "encoder" in d:
      raise ValueError(f"SamConfig has both a nested encoder and flat ViT fields "
                       f"{sorted(legacy)}")
    if legacy:
      d["encoder"] = ViTConfig.from_dict(legacy)
    elif "encoder" in d:
      d["encoder"] = encoder_config_from_dict(d["encoder"])
    return cls(**d)


def _vit(dim: int, depth: int, heads: int, global_idx) -> SamConfig:
  return SamConfig(encoder=ViTConfig(dim=dim, depth=depth, num_heads=heads,
                                     mlp_dim=4 * dim, global_attn_indexes=tuple(global_idx)))


# Official hyper-parameters (segment_anything/build_sam.py).
PRESETS = {
    "vit_b": _vit(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": _vit(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": _vit(1280, 32, 16, (7, 15, 23, 31)),
    # Small presets for tests: odd sizes everywhere, windows that need padding
    # (grid 10 with window 3 -> 12; grid 7 with window 5 -> 10), one or two
    # global blocks. They keep 8 decoder heads like every released SAM, since
    # the decoder's head count is not recorded in checkpoint tensors.
    "tiny": SamConfig(
        image_size=160,
        encoder=ViTConfig(patch_size=16, dim=24, depth=3, num_heads=3, mlp_dim=40,
                          window_size=3, global_attn_indexes=(1,)),
        prompt_embed_dim=32,
        mask_in_chans=16, decoder_depth=2, decoder_num_heads=8,
        decoder_mlp_dim=24, num_multimask_outputs=3, iou_head_depth=3,
        iou_head_hidden_dim=20),
    "tiny_wide": SamConfig(
        image_size=112,
        encoder=ViTConfig(patch_size=16, dim=40, depth=4, num_heads=5, mlp_dim=72,
                          window_size=5, global_attn_indexes=(1, 3)),
        prompt_embed_dim=48,
        mask_in_chans=20, decoder_depth=3, decoder_num_heads=8,
        decoder_mlp_dim=56, num_multimask_outputs=2, iou_head_depth=4,
        iou_head_hidden_dim=28),
    # SAM's full geometry (1024 input, 64 x 64 embedding, 256 x 256 low-res
    # logits) with a two-block, windowed-only encoder (global attention over
    # 4096 tokens dominates CPU time): end-to-end tests at the real scale.
    "tiny_1024": SamConfig(
        image_size=1024,
        encoder=ViTConfig(patch_size=16, dim=48, depth=2, num_heads=3, mlp_dim=96,
                          window_size=14, global_attn_indexes=()),
        prompt_embed_dim=64,
        mask_in_chans=16, decoder_depth=2, decoder_num_heads=8,
        decoder_mlp_dim=128, iou_head_hidden_dim=64),
}


def get_preset(name: str) -> SamConfig:
  if name not in PRESETS:
    raise ValueError(f"Unknown SAM preset {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[name]
