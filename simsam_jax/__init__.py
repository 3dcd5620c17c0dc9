"""simsam_jax: SimSAM zero-shot medical image segmentation on a Flax NNX SAM.

Public entry points:

* `simsam_jax.Predictor`: SAM and SimSAM from Python, shaped like
  `segment_anything.SamPredictor` (`Predictor.load(spec)`, `set_image`,
  `predict`, `simsam`, `predict_batch`, `simsam_batch`).
* `simsam_jax.modeling`: the Segment Anything Model in Flax NNX (`Sam`,
  `SamConfig`, presets `vit_b`, `vit_l`, `vit_h`, `tiny`).
* `simsam_jax.processing`: SAM's pre- and post-processing (resize longest side,
  normalise, pad; low-res logits back to the input image).
* `simsam_jax.checkpoint`: checkpoint conversion from the official `.pth` and
  Hugging Face formats, saving and restoring with Orbax (`load_model`).
"""

__version__ = "0.1.0"


def __getattr__(name):
  # `Predictor` imports JAX and the model: loaded on first use only.
  if name == "Predictor":
    from simsam_jax.predictor import Predictor  # pylint: disable=import-outside-toplevel
    return Predictor
  raise AttributeError(f"module 'simsam_jax' has no attribute {name!r}")


__all__ = ["Predictor", "__version__"]
