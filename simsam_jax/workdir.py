"""Helpers shared by the launchers (evaluate, finetune): no absl flags here.

* `load_sam_model(spec, precision, attention_impl)`: a SAM from a converted
  checkpoint folder or from `random:PRESET[:SEED]`, computing in `precision`
  with `attention_impl`, and a JSON-ready description of where it came from
  (and its preprocessing profile: the sidecar's, "sam" for random weights).
* `write_atomic(path, data)`: write to a temporary sibling, then rename.
* `config_dict(config)`: an `ml_collections.ConfigDict` as plain JSON data.
* `refuse_changed_config(workdir, current, keys)`: a workdir's recorded run
  must agree on the results-defining keys.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Union

from ml_collections import ConfigDict

from simsam_jax.checkpoint import CheckpointError, load_model, read_sidecar
from simsam_jax.modeling import build_sam, get_preset
from simsam_jax.modeling.policy import policy_from_flags


def load_sam_model(spec: str, precision: str = "float32", attention_impl: str = "xla"):
  """(Sam, description) from a folder or `random:PRESET[:SEED]`.

  `precision` ("float32" / "bfloat16") and `attention_impl` ("xla" /
  "cudnn") are checked first, before any weight is read.

  Raises:
    ValueError naming `--config.precision`, `--config.attention_impl` or
    `--config.checkpoint` (a bad preset or seed, an unusable folder).
  """
  policy = policy_from_flags(precision, attention_impl,
                             precision_flag="--config.precision",
                             attention_impl_flag="--config.attention_impl")
  run_options = {"dtype": policy.precision, "attention_impl": policy.attention_impl}
  if spec.startswith("random:"):
    parts = spec.split(":")
    try:
      seed = int(parts[2]) if len(parts) > 2 else 0
      model = build_sam(get_preset(parts[1]), seed, **run_options)
    except (IndexError, ValueError) as e:
      raise ValueError(f"--config.checkpoint={spec}: {e}") from None
    return model, {"spec": spec, "random_weights": True, "sha256": None,
                   "profile": "sam"}
  try:
    meta = read_sidecar(spec)
    model = load_model(spec, **run_options)
  except CheckpointError as e:
    raise ValueError(f"--config.checkpoint={spec}: {e}") from None
  return model, {"spec": spec, "random_weights": False, "path": os.path.abspath(spec),
                 "sha256": meta["source"].get("sha256"), "source": meta["source"],
                 "preset": meta.get("preset"), "profile": meta["profile"]}


def write_atomic(path: str, data: Union[str, bytes]) -> None:
  """Writes `data` to `path` via a temporary file in the same folder."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=folder)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


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
