r"""Evaluation of SAM, SimSAM and the ablations of Table 1 (paper, Sec. 3).

  python -m simsam_jax.evaluate --config=configs/eval.py:busi --workdir=runs/busi \
      --config.data_dir=~/tensorflow_datasets --config.manual_dir=~/data/busi \
      --config.checkpoint=checkpoints/sam_vit_b

`arg` is `DATASET[,native][,runlocal]`: DATASET in busi, cvc_clinicdb,
isic2016 (or any name or alias of `simsam_jax.data.registry`: phantom,
nifti_folder, cvc612, ..., or one a module of `--config.import_modules`
registers: the command imports those modules before it reads this file); `native` evaluates at the original resolution (cleaned protocol)
instead of the paper's 256 x 256; `runlocal` is a seconds-long smoke run
(random `tiny_1024` weights, K = 4, 2 figures) for checking a setup.
Every field can be overridden with `--config.FIELD=value`.

The per-dataset files (`busi_paper.py`, `cvc_paper.py`, ...) are this config
with the dataset and protocol fixed; their docstrings give the paper's
numbers to compare with.
"""

from simsam_jax.evaluation.config import get_eval_config


def get_config(arg: str = "busi"):
  return get_eval_config(arg)
