r"""Test metrics of the phantom-trained model, measured by `simsam_jax.evaluate`.

  python -m simsam_jax.training.phantom_model --checkpoint=checkpoints/phantom_tiny \
      --data_dir=~/tensorflow_datasets --workdir=runs/phantom_tiny_eval

evaluates the checkpoint on the whole `phantom` test split (default config,
24 images, the `paper` protocol of `configs/eval.py:phantom` and of the demo)
with the evaluation's default methods (SAM, SimSAM K = 50 and the
ablations), then the reproducibility check (`check`: SAM only, on shard 0
of `CHECK_SHARDS`, i.e. a few images), and writes both into the checkpoint's
`simsam_jax.json` under "metrics". Every number comes from the evaluation
code (`simsam_jax.evaluate.evaluate`), which is deterministic.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np
from absl import app, flags

from simsam_jax import evaluate as ev
from simsam_jax.checkpoint.store import SIDECAR
from simsam_jax.evaluation.config import get_eval_config
from simsam_jax.workdir import write_atomic

CHECK_SHARDS = 6  # the check evaluates images i % 6 == 0 of the test split (4 of 24)


def eval_config(checkpoint: str, data_dir: str, methods: str, num_shards: int = 1,
                shard_index: int = 0):
  c = get_eval_config("phantom")
  c.checkpoint = os.path.abspath(checkpoint)
  c.data_dir = data_dir
  c.methods = methods
  c.num_figures = 0
  c.num_shards, c.shard_index = num_shards, shard_index
  return c


def check(checkpoint: str, data_dir: str, workdir: str) -> dict[str, Any]:
  """SAM's mean DSC (percent) on shard 0 of `CHECK_SHARDS` of the phantom test split."""
  ev.evaluate(eval_config(checkpoint, data_dir, "sam", CHECK_SHARDS, 0), workdir,
              progress=False)
  rows = [r for r in ev.merged_rows(workdir) if r["method"] == "sam"]
  return {"ids": sorted(r["id"] for r in rows), "num_shards": CHECK_SHARDS, "shard_index": 0,
          "protocol": "paper",
          "sam_dsc": 100.0 * float(np.mean([float(r["dsc"]) for r in rows]))}


def record(checkpoint: str, data_dir: str, workdir: str) -> dict[str, Any]:
  """Full test-split evaluation + `check`, written into the sidecar's "metrics"."""
  results = ev.evaluate(eval_config(checkpoint, data_dir, get_eval_config("phantom").methods),
                        os.path.join(workdir, "test"), progress=True)
  summaries = {m: {k: 100.0 * results["summaries"][m][k]["mean"] for k in ("dsc", "iou", "nsd")
                   if k in results["summaries"][m]} for m in results["methods"]}
  metrics = {"phantom_test": {"builder_config": "default", "split": "test", "protocol": "paper",
                              "num_images": results["num_images"], "k": 50,
                              "mean_percent": summaries},
             "check": check(checkpoint, data_dir, os.path.join(workdir, "check"))}
  path = os.path.join(checkpoint, SIDECAR)
  with open(path) as f:
    sidecar = json.load(f)
  sidecar["metrics"] = metrics
  write_atomic(path, json.dumps(sidecar, indent=2))
  return metrics


def define_flags() -> None:
  """--checkpoint, --data_dir, --workdir (only when run as a program, so that
  importing this module defines no flag another launcher also defines)."""
  flags.DEFINE_string("checkpoint", None, "The trained checkpoint folder.")
  flags.DEFINE_string("data_dir", "~/tensorflow_datasets", "TFDS data_dir.")
  flags.DEFINE_string("workdir", None, "Evaluation workdir.")


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  if not FLAGS.checkpoint or not FLAGS.workdir:
    print("simsam_jax.training.phantom_model: error: --checkpoint and --workdir are required",
          file=sys.stderr)
    return 1
  metrics = record(FLAGS.checkpoint, os.path.expanduser(FLAGS.data_dir), FLAGS.workdir)
  print(json.dumps(metrics, indent=2))
  return 0


if __name__ == "__main__":
  define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
