r"""Evaluation of SAM, SimSAM and the ablations of Table 1 (paper, Sec. 3).

  python -m simsam_jax.evaluate --config=configs/eval.py:busi --workdir=runs/busi \
      --config.data_dir=~/tensorflow_datasets --config.manual_dir=~/data/busi \
      --config.checkpoint=checkpoints/sam_vit_b

`arg` is `DATASET[,native][,runlocal]`: DATASET in busi, cvc_clinicdb,
isic2016; `native` evaluates at the original resolution (cleaned protocol)
instead of the paper's 256 x 256; `runlocal` is a seconds-long smoke run
(random `tiny_1024` weights, K = 4, 2 figures) for checking a setup.
Every field can be overridden with `--config.FIELD=value`.

The per-dataset files (`busi_paper.py`, `cvc_paper.py`, ...) are this config
with the dataset and protocol fixed; their docstrings give the paper's
numbers to compare with.
"""

from ml_collections import ConfigDict

DATASETS = {"busi": "paper437", "cvc_clinicdb": "", "isic2016": ""}
ALIASES = {"cvc": "cvc_clinicdb", "isic": "isic2016"}


def get_config(arg: str = "busi") -> ConfigDict:
  parts = [p.strip() for p in (arg or "busi").split(",") if p.strip()]
  dataset = ALIASES.get(parts[0], parts[0])
  if dataset not in DATASETS:
    raise ValueError(f"unknown dataset {parts[0]!r}; use one of {sorted(DATASETS)}")
  unknown = set(parts[1:]) - {"native", "runlocal"}
  if unknown:
    raise ValueError(f"unknown config options {sorted(unknown)}; use native, runlocal")
  c = ConfigDict()
  c.dataset = dataset
  # BUSI: "paper437" (the published selection) or "full" (all 647 benign +
  # malignant, multi-masks merged), "full_with_normal".
  c.builder_config = DATASETS[dataset]
  c.data_dir = "~/tensorflow_datasets"  # where the TFDS dataset is built
  c.manual_dir = ""  # the dataset as distributed (needed for the first build)
  c.checkpoint = "checkpoints/sam_vit_b"  # converted folder or random:PRESET[:SEED]
  c.protocol = "native" if "native" in parts else "paper"
  c.methods = "sam,simsam,random,pixel_mean,k1"  # see simsam_jax.evaluation.methods
  c.k = 50
  c.seed = 0
  c.split = "test"  # train, validation, test or all
  c.nsd_tolerance = 2.0  # pixels (spacing 1, 1)
  c.empty_mask_policy = "nan"  # both masks empty: metric NaN (excluded from means)
  c.save_masks = False
  c.num_figures = 8
  c.on_bad_example = "raise"  # or "skip": skipped files are listed in results.json
  if "runlocal" in parts:
    c.checkpoint = "random:tiny_1024"
    c.k = 4
    c.num_figures = 2
  return c
