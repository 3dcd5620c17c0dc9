r"""BUSI (paper437), native protocol: SAM, SimSAM and the Table 1 ablations.

  python -m simsam_jax.evaluate --config=configs/busi_native.py --workdir=runs/busi_native \
      --config.data_dir=~/tensorflow_datasets --config.manual_dir=PATH_TO_DATASET \
      --config.checkpoint=checkpoints/sam_vit_b

This is the cleaned protocol at the original resolution (CVC masks > 127, metrics at native size, NSD tolerance 2 px there): no published numbers; compare SimSAM with SAM in the same run. For reference, the paper's Table 1 at
its own 256 x 256 protocol (DSC / NSD, %):

  SAM            79.3 ± 14.8 / 38.0 ± 21.7
  SimSAM         81.3 ± 15.2 / 41.6 ± 21.8
  random clicks  83.6 ± 8.7 / 42.6 ± 23.8
  pixel mean     77.5 ± 18.6 / 39.1 ± 22.5
  K = 1          75.8 ± 22.2 / 40.0 ± 23.4

(‡ marks p < 0.01 vs SAM in table.md.) Splits are the
committed deterministic ones (simsam_jax/data/splits), not the authors'
unrecorded random split, so expect differences of a few points.
"""

from simsam_jax.evaluation.config import get_eval_config


def get_config(arg: str = ""):
  return get_eval_config("busi,native" + ("," + arg if arg else ""))
