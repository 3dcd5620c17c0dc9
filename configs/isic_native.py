r"""ISIC-2016, native protocol: SAM, SimSAM and the Table 1 ablations.

  python -m simsam_jax.evaluate --config=configs/isic_native.py --workdir=runs/isic_native \
      --config.data_dir=~/tensorflow_datasets --config.manual_dir=PATH_TO_DATASET \
      --config.checkpoint=checkpoints/sam_vit_b

This is the cleaned protocol at the original resolution (CVC masks > 127, metrics at native size, NSD tolerance 2 px there): no published numbers; compare SimSAM with SAM in the same run. For reference, the paper's Table 1 at
its own 256 x 256 protocol (DSC / NSD, %):

  SAM            81.9 ± 13.1 / 17.4 ± 17.1
  SimSAM         81.8 ± 13.5 / 19.0 ± 18.8
  random clicks  69.4 ± 27.1 / 21.0 ± 18.5
  pixel mean     78.3 ± 18.5 / 17.2 ± 18.3
  K = 1          73.4 ± 24.6 / 16.9 ± 18.6

(‡ marks p < 0.01 vs SAM in table.md.) Splits are the
committed deterministic ones (simsam_jax/data/splits), not the authors'
unrecorded random split, so expect differences of a few points.
"""

from simsam_jax.evaluation.config import get_eval_config


def get_config(arg: str = ""):
  return get_eval_config("isic2016,native" + ("," + arg if arg else ""))
