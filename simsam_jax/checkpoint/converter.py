"""Applies a key table to a source checkpoint, checked against the model.

The target is the abstract state of `Sam(config)` (`nnx.eval_shape`): every
source tensor must map to exactly one model leaf with the right shape after
its layout transform, and every model leaf must be filled. All problems are
collected and raised together in one `CheckpointError`; nothing is guessed
from array rank and nothing missing is filled in.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from simsam_jax.checkpoint.key_tables import LAYOUT_RANKS, LAYOUTS, find_rule, render_target
from simsam_jax.checkpoint.sources import CheckpointError, SourceCheckpoint
from simsam_jax.modeling.config import SamConfig
from simsam_jax.modeling.sam import abstract_sam


def model_leaves(config: SamConfig) -> dict[str, tuple[int, ...]]:
  """Dotted path -> shape of every leaf of the abstract model's state."""
  state = nnx.state(abstract_sam(config))
  return {".".join(str(k) for k in path): tuple(v.get_value().shape)
          for path, v in nnx.to_flat_state(state)}


def convert_tensors(src: SourceCheckpoint, config: SamConfig) -> dict[str, np.ndarray]:
  """Maps `src.tensors` onto the model's leaves; raises on any problem.

  Returns:
    dotted model path -> float32 numpy array in flax layout.
  """
  table = src.table
  expected = model_leaves(config)
  fields = {"hyper_last": 2, "iou_last": config.iou_head_depth - 1}
  problems: list[str] = []
  out: dict[str, np.ndarray] = {}
  origin: dict[str, str] = {}
  attempted: set[str] = set()
  for key in sorted(src.tensors):
    value = src.tensors[key]
    if key in table.aliases:
      original = table.aliases[key]
      if original not in src.tensors:
        problems.append(f"{key}: duplicate of {original}, which is missing")
      elif not np.array_equal(value, src.tensors[original]):
        problems.append(f"{key}: should duplicate {original} but differs")
      continue
    if key in table.ignored:
      want = table.ignored[key]
      if want is not None and not np.allclose(np.ravel(value), want, atol=1e-3):
        problems.append(
            f"{key}: {np.ravel(value).tolist()} differs from the standard "
            f"{list(want)} that simsam_jax.processing uses")
      continue
    rule = find_rule(table, key)
    if rule is None:
      problems.append(f"{key} {tuple(value.shape)}: unexpected tensor (no rule in the "
                      f"{table.name} key table)")
      continue
    template, layout, match = rule
    target = render_target(template, match, fields)
    if target not in expected:
      problems.append(f"{key} {tuple(value.shape)}: maps to {target}, which this "
                      "architecture does not have (unexpected tensor)")
      continue
    attempted.add(target)
    if target in origin:
      problems.append(f"{key}: maps to {target}, already filled by {origin[target]}")
      continue
    rank = LAYOUT_RANKS.get(layout)
    if rank is not None and value.ndim != rank:
      problems.append(f"{key}: {layout} weight must have rank {rank}, got shape "
                      f"{tuple(value.shape)}")
      continue
    converted = np.ascontiguousarray(LAYOUTS[layout](value), dtype=np.float32)
    if converted.shape != expected[target]:
      problems.append(
          f"{key} {tuple(value.shape)}: after '{layout}' layout has shape "
          f"{converted.shape}, model expects {expected[target]} at {target}")
      continue
    if not np.all(np.isfinite(converted)):
      problems.append(f"{key}: contains NaN or Inf")
      continue
    out[target] = converted
    origin[target] = key
  for target in sorted(set(expected) - attempted):
    problems.append(f"missing tensor for {target} {expected[target]}")
  if problems:
    raise CheckpointError(src.path, problems)
  return out


def to_state(config: SamConfig, flat: dict[str, np.ndarray]) -> nnx.State:
  """Builds the model's nnx.State from dotted-path arrays (all leaves given)."""
  state = nnx.state(abstract_sam(config))
  pure = {}
  for path, _ in nnx.to_flat_state(state):
    node = pure
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = flat[".".join(str(k) for k in path)]
  nnx.replace_by_pure_dict(state, pure)
  return state
