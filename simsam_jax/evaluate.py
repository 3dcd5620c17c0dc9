r"""Evaluates SAM, SimSAM and ablations on a dataset: Table 1 in one command.

  python -m simsam_jax.evaluate --config=configs/busi_paper.py --workdir=runs/busi
  python -m simsam_jax.evaluate --config=configs/eval.py:busi --workdir=runs/busi \
      --config.data_dir=~/tensorflow_datasets --config.manual_dir=~/data/busi \
      --config.checkpoint=checkpoints/sam_vit_b --config.methods=sam,simsam,random,pixel_mean,k1

This module is the command line; the run is
`simsam_jax.evaluation.evaluator.evaluate` (call it from Python). Images go
through `simsam_jax.evaluation.runner` `config.batch_size` at a
time (default 0: 8 per local device on GPU/TPU, 1 per device on CPU): ONE
compiled program per batch encodes the images once and runs SAM and every
requested method on the embeddings (vmapped over images, sharded over the
local devices), with DSC and IoU on the device; only masks and scalars come
back. Meanwhile `grain` threads prepare the next images and a thread pool
computes NSD and writes rows, masks and figures. The program compiles once
per (batch shape, image size, K, method set): once per run in the `paper`
protocol, once per distinct image size in the `native` protocol (images are
batched by size). With one image per device, rows equal a batch-1 run's;
with several, float rounding inside batched ops can flip near-ties (see
`simsam_jax.evaluation.runner`).

Outputs in `--workdir`:

* `config.json`: the configuration of the run. Re-running with the same
  workdir resumes; a configuration that would change results (dataset,
  checkpoint, protocol, K, seed, ...) is refused before any work.
* `per_image.csv`: one row per image x method (id, split, file names, DSC,
  IoU, NSD, confidence, chosen index, foreground fraction), appended and
  flushed image by image as each batch finishes: an interrupted run loses
  nothing written, and a re-run computes only the missing rows (in the
  `native` protocol rows are appended in the order their size-batches
  finish; the merged file of a sharded run is sorted by id).
* `results.json`: per method mean / population std / n of each metric, the
  Wilcoxon signed-rank test and paired bootstrap CI of every method vs SAM,
  the empty-mask policy, skipped files, the config, software versions and the
  checkpoint's sha256.
* `table.md`: Table 1 layout (mean ± std in percent, ‡ where p < 0.01 vs SAM).
* `figures/`: panels like the paper's Fig. 2 (image with box, ground truth,
  SAM, SimSAM, union of the K candidates) for `config.num_figures` images.
* `masks/<method>/<id>.png` when `config.save_masks`.

Metrics, CSV columns, report sections and figures are plug-ins
(`simsam_jax.evaluation.plugins`) chosen by `config.metrics`,
`config.columns`, `config.reports` and `config.figures`;
`--config.import_modules=my_module` imports a module that registers its own
(and click strategies, aggregations, methods, datasets) first, before the
config file reads its argument: `--config=configs/eval.py:my_dataset
--config.import_modules=my_module` evaluates a dataset `my_module` registers.
`config.methods` is a comma-separated list of registered methods
(`simsam_jax.evaluation.methods`) or, in a config file, a dict of
`SimSamConfig` overrides: `{"sam": {}, "simsam": {}, "k8": {"k": 8}}`.

A workdir belongs to one run at a time (`simsam_jax.workdir.lock`): a second
process started on it (or on the same shard) exits at once with an error
naming the workdir and the running process's pid.

Several processes can share the work (`config.num_shards`,
`config.shard_index`, `config.distributed`): each evaluates the images
`i % num_shards == shard_index` of the split and appends its rows to
`shards/SSSSS-of-NNNNN.csv` in the common workdir (which must be on storage
every process sees); the process that finds every image done writes the merged
`per_image.csv` and the reports. Per-image results depend only on the
configuration and the image id, so they equal a one-process run's.

  # on each of 4 machines (or as a 4-task cluster array), I = 0..3:
  python -m simsam_jax.evaluate --config=configs/busi_paper.py --workdir=/shared/busi \
      --config.num_shards=4 --config.shard_index=I
  # on every host of a Cloud TPU pod slice (one shard per JAX process):
  python -m simsam_jax.evaluate --config=configs/busi_paper.py --workdir=/shared/busi \
      --config.distributed=auto --config.num_shards=0
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from simsam_jax import console
from simsam_jax.data.common import DatasetError
# The library lives in `evaluation.evaluator`; these names are re-exported
# for code written against this module.
from simsam_jax.evaluation import runner as runner_lib  # noqa: F401
from simsam_jax.evaluation.evaluator import (  # noqa: F401
    CSV_FIELDS, METRICS, RESULT_KEYS, EvaluationError, RowWriter, _clean, _config_dict,
    _fmt, _json_default, check_workdir, evaluate, image_key, incomplete_message,
    initialize_distributed, load_examples, load_sam_model, merged_rows, merged_skipped,
    owned_workdir, read_rows, record_config, render_table, resolve_shard, shard_files,
    software_versions, write_atomic, write_rows)
from simsam_jax.evaluation.plugins import figure  # noqa: F401
from simsam_jax.evaluation.plugins import import_modules_in_argv


def define_flags() -> None:
  """Defines --config and --workdir (only when run as a program, so that other
  launchers, such as `simsam_jax.demo`, can import this module)."""
  config_flags.DEFINE_config_file("config", None, "Evaluation config file.")
  flags.DEFINE_string("workdir", None, "Output folder (resumable).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  if config is None or not workdir:
    print("simsam_jax.evaluate: error: --config and --workdir are required", file=sys.stderr)
    return 1
  with console.session(workdir, "evaluate"):
    try:
      results = evaluate(config, workdir)
    except (EvaluationError, DatasetError) as e:
      print(f"simsam_jax.evaluate: error: {e}", file=sys.stderr)
      return 1
    if not results["complete"]:
      print(incomplete_message(results, workdir))
      return 0
    with open(os.path.join(workdir, "table.md")) as f:
      print(f.read())
    print(f"Wrote {workdir}. {console.where_logs_went()}".rstrip())
  return 0


def import_user_modules(argv) -> None:
  """Imports `--config.import_modules` before absl loads `--config=FILE:ARG`
  (whose ARG may name a dataset such a module registers); a module that
  cannot be imported ends the program with an error naming the flag."""
  try:
    import_modules_in_argv(argv)
  except ValueError as e:
    print(f"simsam_jax.evaluate: error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  import_user_modules(sys.argv)
  define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
