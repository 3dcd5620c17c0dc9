"""Architecture hyper-parameters of the Segment Anything Model and its presets.

A `SamConfig` fully determines the shapes of every parameter, so that the
converter can build the abstract model (`nnx.eval_shape`) and check a
checkpoint against it tensor by tensor.

Compute precision and attention implementation are run options, not
architecture: they are not fields here (presets and checkpoint sidecars
compare whole configs) but a `policy.Policy` given when a model is built or
loaded.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Tuple


@dataclasses.dataclass(frozen=True)
class SamConfig:
  """SAM architecture.

  Attributes:
    image_size: side of the square, padded model input in pixels (1024).
    patch_size: ViT patch size (16); `image_size // patch_size` is the side of
      the image embedding grid (64).
    encoder_dim: ViT width (768 / 1024 / 1280 for B / L / H).
    encoder_depth: number of ViT blocks.
    encoder_num_heads: attention heads per ViT block.
    encoder_mlp_dim: hidden width of the ViT MLPs (4 x encoder_dim).
    encoder_window_size: side of the attention windows of non-global blocks.
    encoder_global_attn_indexes: indices of the blocks with global attention.
    encoder_layer_norm_eps: epsilon of every LayerNorm in the image encoder.
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
  patch_size: int = 16
  encoder_dim: int = 768
  encoder_depth: int = 12
  encoder_num_heads: int = 12
  encoder_mlp_dim: int = 3072
  encoder_window_size: int = 14
  encoder_global_attn_indexes: Tuple[int, ...] = (2, 5, 8, 11)
  encoder_layer_norm_eps: float = 1e-6
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
    problems = []
    if self.image_size % self.patch_size:
      problems.append(
          f"image_size={self.image_size} is not a multiple of "
          f"patch_size={self.patch_size}")
    if self.encoder_dim % self.encoder_num_heads:
      problems.append(
          f"encoder_dim={self.encoder_dim} is not divisible by "
          f"encoder_num_heads={self.encoder_num_heads}")
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
    bad = [i for i in self.encoder_global_attn_indexes
           if not 0 <= i < self.encoder_depth]
    if bad:
      problems.append(
          f"encoder_global_attn_indexes {bad} outside [0, {self.encoder_depth})")
    if self.encoder_window_size < 0:
      problems.append("encoder_window_size must be >= 0")
    if problems:
      raise ValueError("Invalid SamConfig: " + "; ".join(problems))
    object.__setattr__(self, "encoder_global_attn_indexes",
                       tuple(int(i) for i in self.encoder_global_attn_indexes))

  @property
  def image_embedding_size(self) -> int:
    """Side of the image embedding grid (64 for 1024 / 16)."""
    return self.image_size // self.patch_size

  @property
  def mask_input_size(self) -> int:
    """Side of the dense mask prompt and of the low-res logits (256)."""
    return 4 * self.image_embedding_size

  @property
  def num_mask_tokens(self) -> int:
    return self.num_multimask_outputs + 1

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["encoder_global_attn_indexes"] = list(self.encoder_global_attn_indexes)
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "SamConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"Unknown SamConfig fields: {unknown}")
    d = dict(d)
    if "encoder_global_attn_indexes" in d:
      d["encoder_global_attn_indexes"] = tuple(d["encoder_global_attn_indexes"])
    return cls(**d)


def _vit(dim: int, depth: int, heads: int, global_idx) -> SamConfig:
  return SamConfig(
      encoder_dim=dim, encoder_depth=depth, encoder_num_heads=heads,
      encoder_mlp_dim=4 * dim, encoder_global_attn_indexes=tuple(global_idx))


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
        image_size=160, patch_size=16, encoder_dim=24, encoder_depth=3,
        encoder_num_heads=3, encoder_mlp_dim=40, encoder_window_size=3,
        encoder_global_attn_indexes=(1,), prompt_embed_dim=32,
        mask_in_chans=16, decoder_depth=2, decoder_num_heads=8,
        decoder_mlp_dim=24, num_multimask_outputs=3, iou_head_depth=3,
        iou_head_hidden_dim=20),
    "tiny_wide": SamConfig(
        image_size=112, patch_size=16, encoder_dim=40, encoder_depth=4,
        encoder_num_heads=5, encoder_mlp_dim=72, encoder_window_size=5,
        encoder_global_attn_indexes=(1, 3), prompt_embed_dim=48,
        mask_in_chans=20, decoder_depth=3, decoder_num_heads=8,
        decoder_mlp_dim=56, num_multimask_outputs=2, iou_head_depth=4,
        iou_head_hidden_dim=28),
    # SAM's full geometry (1024 input, 64 x 64 embedding, 256 x 256 low-res
    # logits) with a two-block, windowed-only encoder (global attention over
    # 4096 tokens dominates CPU time): end-to-end tests at the real scale.
    "tiny_1024": SamConfig(
        image_size=1024, patch_size=16, encoder_dim=48, encoder_depth=2,
        encoder_num_heads=3, encoder_mlp_dim=96, encoder_window_size=14,
        encoder_global_attn_indexes=(), prompt_embed_dim=64,
        mask_in_chans=16, decoder_depth=2, decoder_num_heads=8,
        decoder_mlp_dim=128, iou_head_hidden_dim=64),
}


def get_preset(name: str) -> SamConfig:
  if name not in PRESETS:
    raise ValueError(f"Unknown SAM preset {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[name]
