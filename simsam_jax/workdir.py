"""Helpers shared by the launchers (evaluate, finetune): no absl flags here.

* `load_sam_model(spec, precision, attention_impl)`: the checkpoint resolver
  (`simsam_jax.checkpoint.resolve`) with the launchers' `--config.*` flag
  names: a SAM computing in `precision` with `attention_impl`, and its
  provenance dict.
* `write_atomic(path, data)`: `simsam_jax.fileio.write_atomic`.
* `config_dict(config)`: an `ml_collections.ConfigDict` as plain JSON data.
* `refuse_changed_config(workdir, current, keys)`: a workdir's recorded run
  must agree on the results-defining keys.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ml_collections import ConfigDict

from simsam_jax import fileio
from simsam_jax.checkpoint.resolve import resolve_checkpoint
from simsam_jax.modeling.policy import policy_from_flags


def load_sam_model(spec: str, precision: str = "float32", attention_impl: str = "xla"):
  """(Sam, description) from a spec (`checkpoint.resolve.resolve_checkpoint`).

  `precision` ("float32" / "bfloat16") and `attention_impl` ("xla" /
  "cudnn") are checked first, before any weight is read.

  Raises:
    ValueError naming `--config.precision`, `--config.attention_impl` or
    `--config.checkpoint` (a bad preset or seed, an unusable folder).
  """
  policy = policy_from_flags(precision, attention_impl,
                             precision_flag="--config.precision",
                             attention_impl_flag="--config.attention_impl")
  return resolve_checkpoint(spec, policy, flag="--config.checkpoint")


write_atomic = fileio.write_atomic


def config_dict(config: ConfigDict) -> dict[str, Any]:
  return json.loads(config.to_json_best_effort())


def refuse_changed_config(workdir: str, current: dict[str, Any], keys) -> None:
  """ValueError if `workdir/config.json` differs from `current` on `keys`."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    previous = json.load(f)
  diff = {k: (previous.get(k), current.get(k)) for k in keys
          if previous.get(k) != current.get(k)}
  if diff:
    lines = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
    raise ValueError(f"--workdir={workdir} holds a run with a different config ({lines}); "
                     "use another workdir")
