r"""ISIC-2016, paper protocol: SAM, SimSAM and the Table 1 ablations.

  python -m simsam_jax.evaluate --config=configs/isic_paper.py --workdir=runs/isic_paper \
      --config.data_dir=~/tensorflow_datasets --config.manual_dir=PATH_TO_DATASET \
      --config.checkpoint=checkpoints/sam_vit_b

This is the published protocol (256 x 256, masks > 0, GT-extremity box, metrics at 256): expect, with the official ViT-B weights, numbers close to the paper's Table 1 (DSC / NSD, %):

  SAM            81.9 ± 13.1 / 17.4 ± 17.1
  SimSAM         81.8 ± 13.5 / 19.0 ± 18.8
  random clicks  69.4 ± 27.1 / 21.0 ± 18.5
  pixel mean     78.3 ± 18.5 / 17.2 ± 18.3
  K = 1          73.4 ± 24.6 / 16.9 ± 18.6

(Paper Table 1; ‡ marks p < 0.01 vs SAM in table.md.) Splits are the
committed deterministic ones (simsam_jax/data/splits), not the authors'
unrecorded random split, so expect differences of a few points.
"""

from simsam_jax.evaluation.config import get_eval_config


def get_config(arg: str = ""):
  return get_eval_config("isic2016" + ("," + arg if arg else ""))
