"""Evaluation: per-image metrics and statistics over test sets.

* `simsam_jax.evaluation.metrics`: DSC, IoU and NSD (surface Dice through
  DeepMind's `surface_distance`) of bool masks, with an explicit
  `EmptyMaskPolicy` for empty masks.
* `simsam_jax.evaluation.statistics`: nan-aware mean +- population std,
  Wilcoxon signed-rank tests and paired bootstrap intervals between methods.
* `simsam_jax.evaluation.runner`: the batched, device-sharded program that
  runs SAM and every SimSAM variant on batches of images (`BatchRunner`),
  the prefetching loader and the batch-size rule of `--config.batch_size`.
* `simsam_jax.evaluation.evaluator`: the evaluation run (`evaluate(config,
  workdir)`) behind `python -m simsam_jax.evaluate`.
* `simsam_jax.evaluation.plugins`: registries of per-image metrics and CSV
  columns, report sections and figures, chosen by the config.
* `simsam_jax.evaluation.methods`: the methods an evaluation compares.

The package itself (metrics, statistics) is numpy / scipy only and does not
import JAX; import `runner`, `evaluator` and `plugins` explicitly.
"""

from simsam_jax.evaluation.metrics import (BOTH_EMPTY_IS_ONE, DEFAULT_POLICY,
                                           DEFAULT_SPACING, DEFAULT_TOLERANCE,
                                           METRIC_NAMES, PUBLISHED_POLICY,
                                           EmptyMaskPolicy, as_policy,
                                           compute_metrics, dice, iou, nsd,
                                           policy_description)
from simsam_jax.evaluation.statistics import (PAPER_ALPHA, SIGNIFICANCE_MARKER,
                                              compare_methods,
                                              paired_bootstrap_ci, summarize,
                                              wilcoxon_signed_rank)

__all__ = ["BOTH_EMPTY_IS_ONE", "DEFAULT_POLICY", "DEFAULT_SPACING", "DEFAULT_TOLERANCE",
           "METRIC_NAMES", "PAPER_ALPHA", "PUBLISHED_POLICY", "SIGNIFICANCE_MARKER",
           "EmptyMaskPolicy", "as_policy", "compare_methods", "compute_metrics", "dice",
           "iou", "nsd", "paired_bootstrap_ci", "policy_description", "summarize",
           "wilcoxon_signed_rank"]
