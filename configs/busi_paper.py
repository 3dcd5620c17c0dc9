r"""BUSI (paper437), paper protocol: SAM, SimSAM and the Table 1 ablations.

  python -m simsam_jax.evaluate --config=configs/busi_paper.py --workdir=runs/busi_paper \
      --config.data_dir=~/tensorflow_datasets --config.manual_dir=PATH_TO_DATASET \
      --config.checkpoint=checkpoints/sam_vit_b

This is the published protocol (256 x 256, masks > 0, GT-extremity box, metrics at 256): expect, with the official ViT-B weights, numbers close to the paper's Table 1 (DSC / NSD, %):

  SAM            79.3 ± 14.8 / 38.0 ± 21.7
  SimSAM         81.3 ± 15.2 / 41.6 ± 21.8
  random clicks  83.6 ± 8.7 / 42.6 ± 23.8
  pixel mean     77.5 ± 18.6 / 39.1 ± 22.5
  K = 1          75.8 ± 22.2 / 40.0 ± 23.4

(Paper Table 1; ‡ marks p < 0.01 vs SAM in table.md.) Splits are the
committed deterministic ones (simsam_jax/data/splits), not the authors'
unrecorded random split, so expect differences of a few points.
"""

from simsam_jax.evaluation.config import get_eval_config


def get_config(arg: str = ""):
  return get_eval_config("busi" + ("," + arg if arg else ""))
