"""Flax NNX port of the Segment Anything Model."""

from simsam_jax.modeling.config import PRESETS, SamConfig, get_preset
from simsam_jax.modeling.encoders import EncoderConfig, EncoderFamily, register_encoder
from simsam_jax.modeling.encoders.vit import ViTConfig
from simsam_jax.modeling.policy import ATTENTION_IMPLS, PRECISIONS, Policy
from simsam_jax.modeling.sam import (Sam, SamFunctions, abstract_sam, build_sam,
                                     make_sam_functions, with_policy)

__all__ = ["ATTENTION_IMPLS", "EncoderConfig", "EncoderFamily", "PRECISIONS", "PRESETS",
           "Policy", "SamConfig", "ViTConfig", "register_encoder",
           "get_preset", "Sam", "SamFunctions", "abstract_sam", "build_sam",
           "make_sam_functions", "with_policy"]
