"""Declarative key tables: source checkpoint names -> Flax state paths.

Each rule is `(regex over the source key, target path template, layout)`.
The template may use the regex groups (`{1}`, `{2}`) and these derived
fields, computed from the `SamConfig`: `{hyper_last}` (index of the last
hypernetwork MLP layer) and `{iou_last}` (last IoU-head layer); a group may
be shifted with `{1+1}` (Hugging Face numbers the hidden MLP layers after a
separate `proj_in`).

Layouts (PyTorch -> flax):
  identity        same array.
  linear          (out, in) -> (in, out).
  conv            (out, in, kh, kw) -> (kh, kw, in, out).
  conv_transpose  (in, out, kh, kw) -> (kh, kw, out, in); flax
                  `ConvTranspose(transpose_kernel=True)` expects the kernel of
                  the forward convolution it transposes.

A model's table is the rules of its image-encoder family (`VIT_RULES` for
SAM's ViT; a family registered in `simsam_jax.modeling.encoders` brings its
own, built with `ln_rules` / `dense_rules`) followed by the prompt-encoder
and mask-decoder rules shared by every family (`PROMPT_DECODER_RULES`), per
naming convention: "official" (`segment_anything` names) or "hugging_face"
(`transformers.SamModel` names); `key_table` assembles it.

Aliases are source keys that duplicate another tensor (Hugging Face stores
the shared random-Fourier matrix twice); they must equal their original.
Ignored keys carry no model weights; `expected` values, when given, must
match (SAM's pixel normalisation lives in `simsam_jax.processing`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional

import numpy as np

LAYOUTS = {
    "identity": lambda w: w,
    "linear": lambda w: np.transpose(w, (1, 0)),
    "conv": lambda w: np.transpose(w, (2, 3, 1, 0)),
    "conv_transpose": lambda w: np.transpose(w, (2, 3, 1, 0)),
}
LAYOUT_RANKS = {"linear": 2, "conv": 4, "conv_transpose": 4}


@dataclasses.dataclass(frozen=True)
class KeyTable:
  name: str
  rules: tuple[tuple[str, str, str], ...]
  aliases: dict[str, str]  # duplicate source key -> original source key
  ignored: dict[str, Optional[tuple[float, ...]]]  # key -> expected values


def ln_rules(src: str, dst: str) -> list[tuple[str, str, str]]:
  return [(src + r"\.weight", dst + ".scale", "identity"),
          (src + r"\.bias", dst + ".bias", "identity")]


def dense_rules(src: str, dst: str, layout: str = "linear",
           bias: bool = True) -> list[tuple[str, str, str]]:
  rules = [(src + r"\.weight", dst + ".kernel", layout)]
  if bias:
    rules.append((src + r"\.bias", dst + ".bias", "identity"))
  return rules


_DEC = r"mask_decoder\.transformer\.layers\.(\d+)"
_ATTN = r"(self_attn|cross_attn_token_to_image|cross_attn_image_to_token)"
_PROJ = r"(q_proj|k_proj|v_proj|out_proj)"
_ENC_OUT = "image_encoder.blocks.{1}"
_HF_ENC = r"vision_encoder\.layers\.(\d+)"

# The image encoder's rules are per family (`modeling.encoders`); SAM's ViT:
VIT_RULES = {
    "official": tuple(
        dense_rules(r"image_encoder\.patch_embed\.proj", "image_encoder.patch_embed", "conv")
        + [(r"image_encoder\.pos_embed", "image_encoder.pos_embed", "identity")]
        + ln_rules(r"image_encoder\.blocks\.(\d+)\.norm1", _ENC_OUT + ".norm1")
        + ln_rules(r"image_encoder\.blocks\.(\d+)\.norm2", _ENC_OUT + ".norm2")
        + dense_rules(r"image_encoder\.blocks\.(\d+)\.attn\.qkv", _ENC_OUT + ".attn.qkv")
        + dense_rules(r"image_encoder\.blocks\.(\d+)\.attn\.proj", _ENC_OUT + ".attn.proj")
        + [(r"image_encoder\.blocks\.(\d+)\.attn\.rel_pos_(h|w)",
            _ENC_OUT + ".attn.rel_pos_{2}", "identity")]
        + dense_rules(r"image_encoder\.blocks\.(\d+)\.mlp\.(lin1|lin2)", _ENC_OUT + ".mlp.{2}")
        + dense_rules(r"image_encoder\.neck\.0", "image_encoder.neck_conv1", "conv",
                      bias=False)
        + ln_rules(r"image_encoder\.neck\.1", "image_encoder.neck_norm1")
        + dense_rules(r"image_encoder\.neck\.2", "image_encoder.neck_conv2", "conv",
                      bias=False)
        + ln_rules(r"image_encoder\.neck\.3", "image_encoder.neck_norm2")),
    "hugging_face": tuple(
        dense_rules(r"vision_encoder\.patch_embed\.projection", "image_encoder.patch_embed",
                    "conv")
        + [(r"vision_encoder\.pos_embed", "image_encoder.pos_embed", "identity")]
        + ln_rules(_HF_ENC + r"\.layer_norm1", _ENC_OUT + ".norm1")
        + ln_rules(_HF_ENC + r"\.layer_norm2", _ENC_OUT + ".norm2")
        + dense_rules(_HF_ENC + r"\.attn\.qkv", _ENC_OUT + ".attn.qkv")
        + dense_rules(_HF_ENC + r"\.attn\.proj", _ENC_OUT + ".attn.proj")
        + [(_HF_ENC + r"\.attn\.rel_pos_(h|w)", _ENC_OUT + ".attn.rel_pos_{2}", "identity")]
        + dense_rules(_HF_ENC + r"\.mlp\.(lin1|lin2)", _ENC_OUT + ".mlp.{2}")
        + dense_rules(r"vision_encoder\.neck\.conv1", "image_encoder.neck_conv1", "conv",
                      bias=False)
        + ln_rules(r"vision_encoder\.neck\.layer_norm1", "image_encoder.neck_norm1")
        + dense_rules(r"vision_encoder\.neck\.conv2", "image_encoder.neck_conv2", "conv",
                      bias=False)
        + ln_rules(r"vision_encoder\.neck\.layer_norm2", "image_encoder.neck_norm2")),
}

# Prompt encoder and mask decoder, shared by every encoder family.
PROMPT_DECODER_RULES = {
    "official": tuple(
        [(r"prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix",
          "prompt_encoder.pe_layer.gaussian_matrix", "identity"),
         (r"prompt_encoder\.point_embeddings\.(\d+)\.weight",
          "prompt_encoder.point_embeddings.{1}.embedding", "identity"),
         (r"prompt_encoder\.(not_a_point_embed|no_mask_embed)\.weight",
          "prompt_encoder.{1}.embedding", "identity")]
        + dense_rules(r"prompt_encoder\.mask_downscaling\.0", "prompt_encoder.mask_conv1", "conv")
        + ln_rules(r"prompt_encoder\.mask_downscaling\.1", "prompt_encoder.mask_norm1")
        + dense_rules(r"prompt_encoder\.mask_downscaling\.3", "prompt_encoder.mask_conv2", "conv")
        + ln_rules(r"prompt_encoder\.mask_downscaling\.4", "prompt_encoder.mask_norm2")
        + dense_rules(r"prompt_encoder\.mask_downscaling\.6", "prompt_encoder.mask_conv3", "conv")
        + dense_rules(_DEC + r"\." + _ATTN + r"\." + _PROJ,
                      "mask_decoder.transformer.layers.{1}.{2}.{3}")
        + ln_rules(_DEC + r"\.(norm[1-4])", "mask_decoder.transformer.layers.{1}.{2}")
        + dense_rules(_DEC + r"\.mlp\.(lin1|lin2)",
                      "mask_decoder.transformer.layers.{1}.mlp.{2}")
        + dense_rules(r"mask_decoder\.transformer\.final_attn_token_to_image\." + _PROJ,
                      "mask_decoder.transformer.final_attn_token_to_image.{1}")
        + ln_rules(r"mask_decoder\.transformer\.norm_final_attn",
                   "mask_decoder.transformer.norm_final_attn")
        + [(r"mask_decoder\.(iou_token|mask_tokens)\.weight",
            "mask_decoder.{1}.embedding", "identity")]
        + dense_rules(r"mask_decoder\.output_upscaling\.0", "mask_decoder.upscale_conv1",
                      "conv_transpose")
        + ln_rules(r"mask_decoder\.output_upscaling\.1", "mask_decoder.upscale_norm")
        + dense_rules(r"mask_decoder\.output_upscaling\.3", "mask_decoder.upscale_conv2",
                      "conv_transpose")
        + dense_rules(r"mask_decoder\.output_hypernetworks_mlps\.(\d+)\.layers\.(\d+)",
                      "mask_decoder.output_hypernetworks_mlps.{1}.layers.{2}")
        + dense_rules(r"mask_decoder\.iou_prediction_head\.layers\.(\d+)",
                      "mask_decoder.iou_prediction_head.layers.{1}")),
    "hugging_face": tuple(
        [(r"shared_image_embedding\.positional_embedding",
          "prompt_encoder.pe_layer.gaussian_matrix", "identity"),
         (r"prompt_encoder\.point_embed\.(\d+)\.weight",
          "prompt_encoder.point_embeddings.{1}.embedding", "identity"),
         (r"prompt_encoder\.(not_a_point_embed|no_mask_embed)\.weight",
          "prompt_encoder.{1}.embedding", "identity")]
        + dense_rules(r"prompt_encoder\.mask_embed\.conv1", "prompt_encoder.mask_conv1", "conv")
        + ln_rules(r"prompt_encoder\.mask_embed\.layer_norm1", "prompt_encoder.mask_norm1")
        + dense_rules(r"prompt_encoder\.mask_embed\.conv2", "prompt_encoder.mask_conv2", "conv")
        + ln_rules(r"prompt_encoder\.mask_embed\.layer_norm2", "prompt_encoder.mask_norm2")
        + dense_rules(r"prompt_encoder\.mask_embed\.conv3", "prompt_encoder.mask_conv3", "conv")
        + dense_rules(_DEC + r"\." + _ATTN + r"\." + _PROJ,
                      "mask_decoder.transformer.layers.{1}.{2}.{3}")
        + ln_rules(_DEC + r"\.layer_norm([1-4])", "mask_decoder.transformer.layers.{1}.norm{2}")
        + dense_rules(_DEC + r"\.mlp\.(lin1|lin2)",
                      "mask_decoder.transformer.layers.{1}.mlp.{2}")
        + dense_rules(r"mask_decoder\.transformer\.final_attn_token_to_image\." + _PROJ,
                      "mask_decoder.transformer.final_attn_token_to_image.{1}")
        + ln_rules(r"mask_decoder\.transformer\.layer_norm_final_attn",
                   "mask_decoder.transformer.norm_final_attn")
        + [(r"mask_decoder\.(iou_token|mask_tokens)\.weight",
            "mask_decoder.{1}.embedding", "identity")]
        + dense_rules(r"mask_decoder\.upscale_conv1", "mask_decoder.upscale_conv1",
                      "conv_transpose")
        + ln_rules(r"mask_decoder\.upscale_layer_norm", "mask_decoder.upscale_norm")
        + dense_rules(r"mask_decoder\.upscale_conv2", "mask_decoder.upscale_conv2",
                      "conv_transpose")
        + dense_rules(r"mask_decoder\.output_hypernetworks_mlps\.(\d+)\.proj_in",
                      "mask_decoder.output_hypernetworks_mlps.{1}.layers.0")
        + dense_rules(r"mask_decoder\.output_hypernetworks_mlps\.(\d+)\.layers\.(\d+)",
                      "mask_decoder.output_hypernetworks_mlps.{1}.layers.{2+1}")
        + dense_rules(r"mask_decoder\.output_hypernetworks_mlps\.(\d+)\.proj_out",
                      "mask_decoder.output_hypernetworks_mlps.{1}.layers.{hyper_last}")
        + dense_rules(r"mask_decoder\.iou_prediction_head\.proj_in",
                      "mask_decoder.iou_prediction_head.layers.0")
        + dense_rules(r"mask_decoder\.iou_prediction_head\.layers\.(\d+)",
                      "mask_decoder.iou_prediction_head.layers.{1+1}")
        + dense_rules(r"mask_decoder\.iou_prediction_head\.proj_out",
                      "mask_decoder.iou_prediction_head.layers.{iou_last}")),
}

# Source keys that duplicate another tensor, and keys without model weights.
_ALIASES = {
    "official": {},
    "hugging_face": {"prompt_encoder.shared_embedding.positional_embedding":
                     "shared_image_embedding.positional_embedding"},
}
_IGNORED = {
    "official": {"pixel_mean": (123.675, 116.28, 103.53),
                 "pixel_std": (58.395, 57.12, 57.375)},
    "hugging_face": {},
}
NAMINGS = tuple(PROMPT_DECODER_RULES)


def key_table(encoder_rules, naming: str, family: str = "vit") -> KeyTable:
  """The whole model's table: an encoder family's rules + the shared ones.

  Args:
    encoder_rules: the family's rules for `naming`
      (`modeling.encoders.EncoderFamily.rules`).
    naming: "official" (`segment_anything` names) or "hugging_face".
    family: the encoder family, named in the table's name unless "vit".
  """
  name = naming if family == "vit" else f"{family} {naming}"
  return KeyTable(name=name, rules=tuple(encoder_rules) + PROMPT_DECODER_RULES[naming],
                  aliases=dict(_ALIASES[naming]), ignored=dict(_IGNORED[naming]))


# The whole tables of SAM with its ViT, in the two naming conventions.
OFFICIAL = key_table(VIT_RULES["official"], "official")
HUGGING_FACE = key_table(VIT_RULES["hugging_face"], "hugging_face")

_FIELD = re.compile(r"\{(\w+)(\+1)?\}")


def render_target(template: str, match: re.Match, fields: dict[str, int]) -> str:
  """Fills a target template from regex groups and derived fields."""

  def sub(m: re.Match) -> str:
    name, plus = m.group(1), m.group(2)
    value = match.group(int(name)) if name.isdigit() else str(fields[name])
    return str(int(value) + 1) if plus else value

  return _FIELD.sub(sub, template)


def find_rule(table: KeyTable, key: str):
  """Returns (target template, layout, match) of the rule matching `key`, or None."""
  for pattern, target, layout in table.rules:
    m = re.fullmatch(pattern, key)
    if m:
      return target, layout, m
  return None
