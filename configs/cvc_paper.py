r"""CVC-ClinicDB, paper protocol: SAM, SimSAM and the Table 1 ablations.

  python -m simsam_jax.evaluate --config=configs/cvc_paper.py --workdir=runs/cvc_paper \
      --config.data_dir=~/tensorflow_datasets --config.manual_dir=PATH_TO_DATASET \
      --config.checkpoint=checkpoints/sam_vit_b

This is the published protocol (`src/corpora.py` `TIFFileReader`: colour
frames and masks read with `tifffile.imread` and resized to 256 x 256 with
`cv2.resize`, bilinear; masks > 0, grey noise included; GT-extremity box;
metrics at 256): expect, with the official ViT-B weights, numbers close to the paper's Table 1 (DSC / NSD, %):

  SAM            86.8 ± 19.0 / 64.4 ± 23.3
  SimSAM         87.3 ± 20.0 / 69.2 ± 23.4
  random clicks  82.3 ± 22.8 / 62.0 ± 29.8
  pixel mean     82.2 ± 26.9 / 65.8 ± 28.3
  K = 1          80.4 ± 27.8 / 60.4 ± 28.8

(Paper Table 1; ‡ marks p < 0.01 vs SAM in table.md.) Splits are the
committed deterministic ones (simsam_jax/data/splits), not the authors'
unrecorded random split, so expect differences of a few points.
"""

from simsam_jax.evaluation.config import get_eval_config


def get_config(arg: str = ""):
  return get_eval_config("cvc_clinicdb" + ("," + arg if arg else ""))
