"""simsam_jax: SimSAM zero-shot medical image segmentation on a Flax NNX SAM.

Public entry points:

* `simsam_jax.modeling`: the Segment Anything Model in Flax NNX (`Sam`,
  `SamConfig`, presets `vit_b`, `vit_l`, `vit_h`, `tiny`).
* `simsam_jax.processing`: SAM's pre- and post-processing (resize longest side,
  normalise, pad; low-res logits back to the input image).
* `simsam_jax.checkpoint`: checkpoint conversion from the official `.pth` and
  Hugging Face formats, saving and restoring with Orbax (`load_model`).
"""

__version__ = "0.1.0"
