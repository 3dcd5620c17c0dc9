r"""The main job on an embedded default: SAM vs SimSAM, no download needed.

  python -m simsam_jax.demo --workdir=runs/demo

Generates the `phantom` dataset (`simsam_jax.data.phantom`: 24 test images of
ultrasound-like lesions with soft, noisy boundaries and exact masks) into
`WORKDIR/tensorflow_datasets`, then runs the full evaluation of
`simsam_jax.evaluate` on it: SAM, SimSAM (K = 50, the paper's settings) and
the ablations `random`, `pixel_mean`, `k1` and `oracle`, with the committed
phantom model `checkpoints/phantom_tiny`: a 1.8 M-parameter SAM (128 x 128
input, four-block windowed ViT, SAM's prompt encoder and mask decoder)
trained from scratch on generated phantoms with interactive prompts by
`configs/pretrain_phantom.py`. About 70 s on two CPU cores (24 images,
compilation included). It knows phantoms only: the demo says so, and its
numbers say nothing about real images.

Result to expect (2-core x86-64 CPU, deterministic): box-only SAM 97.8 +- 0.6
DSC, 96.6 +- 3.3 NSD, 95.8 +- 1.1 IoU; SimSAM 97.6 +- 0.7 DSC, 94.9 +- 4.6 NSD,
95.4 +- 1.3 IoU, i.e. 0.2 pt DSC below SAM (Wilcoxon p = 0.025, not
significant at 0.01: on masks this good there is little left to correct);
`oracle` 97.9 DSC. `--config.checkpoint=random:tiny_1024`
runs a randomly initialised SAM instead (every method near 16 % DSC: random
masks cover most of the image), and the demo then says that the numbers are
meaningless.

The outputs are those of a real evaluation (see `simsam_jax/evaluate.py`):
`config.json`, `per_image.csv`, `results.json`, `table.md` and `figures/`;
library logs go to `logs/demo.log` (`--verbosity=1` keeps them on the
console). Re-running the same command resumes; a workdir holding a
different configuration is refused.

Every field of the configuration (`configs/eval.py`) can be overridden:

  python -m simsam_jax.demo --workdir=runs/demo_vit_b \
      --config.checkpoint=checkpoints/sam_vit_b     # real weights on phantoms
  python -m simsam_jax.demo --workdir=runs/demo_small \
      --config.builder_config=small --config.k=8    # seconds
  python -m simsam_jax.demo --workdir=runs/demo_bf16 --precision=bfloat16

`--precision=float32|bfloat16` (a shorthand for `--config.precision`) is the
compute precision: bfloat16 runs SAM's matmuls and convolutions in bfloat16
with float32 weights, while softmax, LayerNorms, logits and SimSAM stay
float32 (`simsam_jax.modeling.policy`); `--config.attention_impl=cudnn`
selects cuDNN flash attention (GPU, bfloat16). Both are recorded in
`config.json` and `results.json`.

For the paper's datasets use `python -m simsam_jax.evaluate` with the files
in `configs/` (see README, "Reproducing Table 1").
"""

from __future__ import annotations

import os
import shutil
import sys
import time

from absl import app, flags
from ml_collections import ConfigDict, config_flags

from simsam_jax import console
from simsam_jax.data.common import DatasetError
from simsam_jax.evaluation import evaluator as evaluate
from simsam_jax.evaluation.config import get_eval_config
from simsam_jax.modeling import PRECISIONS
from simsam_jax.modeling.policy import policy_from_flags

DEMO_METHODS = "sam,simsam,random,pixel_mean,k1,oracle"
# The committed phantom-trained model (configs/pretrain_phantom.py), found
# next to the package in a checkout (`pip install -e .`).
DEMO_CHECKPOINT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "checkpoints", "phantom_tiny")
OUTPUTS = ("config.json", "per_image.csv", "results.json", "table.md", "figures")


def demo_config() -> ConfigDict:
  """The evaluation config of the demo: the phantom test split, the phantom model.

  `data_dir` is left empty: `run` puts the dataset in `WORKDIR/tensorflow_datasets`.
  """
  config = get_eval_config("phantom")
  config.checkpoint = DEMO_CHECKPOINT
  config.data_dir = ""
  config.methods = DEMO_METHODS
  config.num_figures = 4
  return config


def _banner(*lines: str) -> str:
  rule = "=" * 78
  return "\n".join([rule, *lines, rule])


def random_weights_warning(checkpoint: str) -> str:
  """The banner printed when the model is randomly initialised."""
  return _banner(
      f"RANDOM WEIGHTS: the model is a randomly initialised SAM ({checkpoint}).",
      "Its masks, and every number below, are meaningless: this run shows that",
      "the pipeline works end to end and what an evaluation writes.")


def phantom_model_banner(checkpoint: str) -> str:
  """The banner printed when the model is the committed phantom model."""
  return _banner(
      f"PHANTOM MODEL ({checkpoint}): a 1.8 M-parameter SAM",
      "trained from scratch on generated phantoms (configs/pretrain_phantom.py). It knows",
      "phantoms only: it is not a medical model, and its numbers say nothing",
      "about SAM or SimSAM on real images.")


def is_demo_model(checkpoint: str) -> bool:
  return os.path.abspath(os.path.expanduser(str(checkpoint))) == DEMO_CHECKPOINT


def next_steps(workdir: str) -> str:
  """What to run with a real checkpoint."""
  return "\n".join([
      "With real weights (the official ViT-B checkpoint, sam_vit_b_01ec64.pth):",
      "  pip install -e '.[torch]'",
      "  python -m simsam_jax.convert --src=sam_vit_b_01ec64.pth --dst=checkpoints/sam_vit_b",
      f"  python -m simsam_jax.demo --workdir={workdir}_vit_b "
      "--config.checkpoint=checkpoints/sam_vit_b",
      "and Table 1 of the paper on BUSI (likewise configs/cvc_paper.py, configs/isic_paper.py):",
      "  python -m simsam_jax.evaluate --config=configs/busi_paper.py --workdir=runs/busi \\",
      "      --config.manual_dir=~/data/busi --config.checkpoint=checkpoints/sam_vit_b",
  ])


def run(config: ConfigDict, workdir: str, progress: bool = True) -> dict:
  """Runs the demo evaluation; returns the content of `results.json`.

  Args:
    config: an evaluation config (`demo_config()` or any `configs/eval.py`
      config); an empty `data_dir` becomes `WORKDIR/tensorflow_datasets`.
    workdir: output folder.
    progress: show a progress bar.

  Raises:
    simsam_jax.evaluate.EvaluationError, DatasetError: bad configuration or
      workdir, before anything is written. A workdir that did not exist
      before the call is removed again when the run fails this way.
  """
  config = ConfigDict(config.to_dict())
  if not config.data_dir:
    config.data_dir = os.path.join(workdir, "tensorflow_datasets")
  created = not os.path.exists(workdir)
  try:
    return evaluate.evaluate(config, workdir, progress=progress)
  except (evaluate.EvaluationError, DatasetError):
    if created and os.path.isdir(workdir):
      shutil.rmtree(workdir)
    raise


def define_flags() -> None:
  """Defines --workdir, --config and --precision (only when run as a program,
  so that importing this module defines no flag that another launcher, such
  as `simsam_jax.segment`, also defines)."""
  flags.DEFINE_string("workdir", None, "Output folder (resumable).")
  config_flags.DEFINE_config_dict(
      "config", demo_config(), "Evaluation config; override fields with --config.FIELD=value.")
  flags.DEFINE_string(
      "precision", None, f"Compute precision, one of: {', '.join(PRECISIONS)} "
      "(sets --config.precision; default float32).")


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  if not FLAGS.workdir:
    print("simsam_jax.demo: error: --workdir is required "
          "(e.g. --workdir=runs/demo)", file=sys.stderr)
    return 1
  config, workdir = FLAGS.config, FLAGS.workdir
  if FLAGS.precision is not None:
    try:
      policy_from_flags(FLAGS.precision, config.attention_impl,
                        attention_impl_flag="--config.attention_impl")
    except ValueError as e:
      print(f"simsam_jax.demo: error: {e}", file=sys.stderr)
      return 1
    config.precision = FLAGS.precision
  random_weights = str(config.checkpoint).startswith("random:")
  phantom_model = is_demo_model(config.checkpoint)
  if phantom_model and not os.path.isdir(DEMO_CHECKPOINT):
    print(f"simsam_jax.demo: error: --config.checkpoint: the demo's model {DEMO_CHECKPOINT} "
          "is not there (it ships with the repository: install with `pip install -e .` "
          "from a checkout), or pass --config.checkpoint=random:tiny_1024", file=sys.stderr)
    return 1
  if random_weights:
    print(random_weights_warning(config.checkpoint), flush=True)
  elif phantom_model:
    print(phantom_model_banner("checkpoints/phantom_tiny"), flush=True)
  print(f"Evaluating {config.methods} (K = {config.k}) on {config.dataset}/"
        f"{config.builder_config or 'default'} ({config.split} split), "
        f"checkpoint {config.checkpoint}, {config.precision}, into {workdir}", flush=True)
  start = time.perf_counter()
  with console.session(workdir, "demo"):
    try:
      results = run(config, workdir)
    except (evaluate.EvaluationError, DatasetError) as e:
      print(f"simsam_jax.demo: error: {e}", file=sys.stderr)
      return 1
    elapsed = time.perf_counter() - start
    if not results["complete"]:
      print(evaluate.incomplete_message(results, workdir))
      return 0
    with open(os.path.join(workdir, "table.md")) as f:
      print("\n" + f.read())
    print(f"{results['num_images']} images, {len(results['methods'])} methods in "
          f"{elapsed:.0f} s. Wrote to {workdir}: " + ", ".join(OUTPUTS) + ". "
          + console.where_logs_went())
  if random_weights:
    print(random_weights_warning(config.checkpoint))
  elif phantom_model:
    print("The model knows phantoms only; on medical images use real SAM or MedSAM weights.")
  if random_weights or phantom_model:
    print(next_steps(workdir.rstrip("/")))
  return 0


if __name__ == "__main__":
  define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
