r"""Fine-tunes SAM's mask decoder (SAM-FT, the Table 1A upper bound).

  python -m simsam_jax.finetune --config=configs/finetune.py:busi --workdir=runs/busi_ft \
      --config.data_dir=~/tensorflow_datasets --config.manual_dir=~/data/busi \
      --config.checkpoint=checkpoints/sam_vit_b

Re-running the same command resumes from the last checkpoint (bit-identical
to an uninterrupted run). Outputs and the training recipe:
`simsam_jax.training.trainer`. The fine-tuned model is exported to
`WORKDIR/export/{last,best}`, usable as `--config.checkpoint` of
`simsam_jax.evaluate` and `--checkpoint` of `simsam_jax.segment`.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from simsam_jax import console
from simsam_jax import workdir as workdir_lib
from simsam_jax.data.common import DatasetError
from simsam_jax.training.trainer import TrainingError, finetune

_CONFIG = config_flags.DEFINE_config_file("config", None, "Fine-tuning config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (resumable).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None or not _WORKDIR.value:
    print("simsam_jax.finetune: error: --config and --workdir are required", file=sys.stderr)
    return 1
  with console.session(_WORKDIR.value, "finetune"):
    try:
      with workdir_lib.lock(_WORKDIR.value):  # one run per workdir
        history = finetune(_CONFIG.value, _WORKDIR.value)
    except (TrainingError, DatasetError, workdir_lib.WorkdirError) as e:
      print(f"simsam_jax.finetune: error: {e}", file=sys.stderr)
      return 1
    logging.info("exports: %s", history["exports"])
    print("exported " + " and ".join(history["exports"].values()) + ". "
          + console.where_logs_went())
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
