"""Former home of SAM's ViT image encoder, now `modeling.encoders.vit`.

Kept so that `from simsam_jax.modeling.image_encoder import ...` still works.
"""

from simsam_jax.modeling.encoders.vit import (Attention, Block, ImageEncoder,  # noqa: F401
                                              ViTConfig, relative_position_index,
                                              window_partition, window_unpartition)
