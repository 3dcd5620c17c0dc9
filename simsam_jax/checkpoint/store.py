"""Saving converted SAM weights with Orbax and restoring a ready model.

A converted checkpoint is a folder:

  params/          Orbax (StandardCheckpointer) checkpoint of the model state
                   as a pure nested dict of float32 arrays.
  simsam_jax.json  sidecar: architecture (`SamConfig.to_dict()`, the image
                   encoder nested with its family; the flat ViT fields of
                   older sidecars are read too), preprocessing
                   profile (`simsam_jax.profiles`: "sam", "medsam", ...),
                   source format, source path and sha256, library version.
                   A sidecar without "profile" (written before profiles
                   existed) reads as "sam".

Restoring needs neither torch nor the source file. Checkpoints hold float32
weights only: the compute precision and attention implementation are chosen
when a model is loaded (`load_model(..., dtype=, attention_impl=)`), never
recorded in the sidecar.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from simsam_jax.checkpoint.sources import CheckpointError
from simsam_jax.modeling.config import PRESETS, SamConfig
from simsam_jax.modeling.policy import DTypeLike, make_policy
from simsam_jax.modeling.sam import Sam, split_abstract_sam

SIDECAR = "simsam_jax.json"
DEFAULT_PROFILE = "sam"
PARAMS = "params"
FORMAT_VERSION = 1


def matching_preset(config: SamConfig) -> str | None:
  """Name of the preset whose shapes `config` has, ignoring LayerNorm eps."""
  def strip(c: SamConfig) -> SamConfig:
    c = dataclasses.replace(c, transformer_layer_norm_eps=0.0, final_layer_norm_eps=0.0)
    if hasattr(c.encoder, "layer_norm_eps"):
      c = dataclasses.replace(c, encoder=dataclasses.replace(c.encoder, layer_norm_eps=0.0))
    return c
  for name, preset in PRESETS.items():
    if strip(preset) == strip(config):
      return name
  return None


def save_checkpoint(dst: str, state: nnx.State, config: SamConfig,
                    source: dict[str, Any], profile: str = DEFAULT_PROFILE) -> None:
  """Writes `dst` atomically: into a temporary sibling, then renamed.

  `profile` names the preprocessing the weights were trained with
  (`simsam_jax.profiles`); tools read it from the sidecar.

  Raises FileExistsError if `dst` exists; nothing is left at `dst` on error.
  """
  dst = os.path.abspath(dst)
  if os.path.exists(dst):
    raise FileExistsError(f"--dst {dst} already exists; remove it or choose another")
  parent = os.path.dirname(dst)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix="." + os.path.basename(dst) + ".tmp-", dir=parent)
  try:
    pure = jax.tree.map(np.asarray, nnx.to_pure_dict(state))
    # The calling process writes alone (a process-local temporary folder): in a
    # multi-process run no other process joins Orbax's barriers.
    me = jax.process_index()
    checkpointer = ocp.StandardCheckpointer(
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            primary_host=me, active_processes={me}))
    checkpointer.save(os.path.join(tmp, PARAMS), pure)
    checkpointer.wait_until_finished()
    sidecar = {
        "format_version": FORMAT_VERSION,
        "architecture": config.to_dict(),
        "preset": matching_preset(config),
        "profile": profile,
        "source": source,
        "num_parameters": int(sum(np.size(x) for x in jax.tree.leaves(pure))),
    }
    from simsam_jax import __version__
    sidecar["simsam_jax_version"] = __version__
    with open(os.path.join(tmp, SIDECAR), "w") as f:
      json.dump(sidecar, f, indent=2)
    os.rename(tmp, dst)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def read_sidecar(ckpt_dir: str) -> dict[str, Any]:
  if not os.path.isdir(ckpt_dir):
    raise CheckpointError(ckpt_dir, ["no such checkpoint folder"])
  path = os.path.join(ckpt_dir, SIDECAR)
  if not os.path.isfile(path):
    raise CheckpointError(ckpt_dir, [
        f"not a simsam_jax checkpoint: {SIDECAR} is missing (convert official "
        "or Hugging Face weights with `python -m simsam_jax.convert`)"])
  try:
    with open(path) as f:
      meta = json.load(f)
    meta["config"] = SamConfig.from_dict(meta["architecture"])
    meta.setdefault("profile", DEFAULT_PROFILE)
    if not isinstance(meta["profile"], str):
      raise ValueError(f"profile must be a string, got {meta['profile']!r}")
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CheckpointError(ckpt_dir, [f"unreadable {SIDECAR}: {e}"]) from e
  return meta


def load_model(ckpt_dir: str, *, dtype: DTypeLike = "float32",
               attention_impl: str = "xla") -> Sam:
  """Restores a ready `Sam` from a folder written by `save_checkpoint`.

  Args:
    ckpt_dir: the checkpoint folder.
    dtype: compute precision, "float32" (default) or "bfloat16" (or the
      dtype); the weights are restored float32 either way.
    attention_impl: "xla" (default) or "cudnn" (`modeling.policy`).
  Raises:
    ValueError naming an unknown precision or attention implementation
      (checked before anything is read); CheckpointError for the folder.
  """
  policy = make_policy(dtype, attention_impl)
  meta = read_sidecar(ckpt_dir)
  graphdef, abstract_state = split_abstract_sam(meta["config"], policy)
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                        nnx.to_pure_dict(abstract_state))
  try:
    restored = ocp.StandardCheckpointer().restore(
        os.path.abspath(os.path.join(ckpt_dir, PARAMS)), target)
  except Exception as e:
    raise CheckpointError(ckpt_dir, [f"cannot restore {PARAMS}/ ({type(e).__name__}: {e})"]) from e
  nnx.replace_by_pure_dict(abstract_state, restored)
  return nnx.merge(graphdef, abstract_state)
