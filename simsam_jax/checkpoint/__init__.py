"""Checkpoint conversion (official `.pth`, Hugging Face) and Orbax storage."""

from simsam_jax.checkpoint.converter import convert_tensors, model_leaves, to_state
from simsam_jax.checkpoint.sources import (CheckpointError, SourceCheckpoint, config_from_hf,
                                           config_to_hf, hf_sam_config, infer_config,
                                           read_checkpoint)
from simsam_jax.checkpoint.store import (DEFAULT_PROFILE, load_model, read_sidecar,
                                         save_checkpoint)


def convert_checkpoint(src_path: str, dst: str, profile: str = DEFAULT_PROFILE) -> dict:
  """Reads `src_path`, converts it and writes an Orbax checkpoint at `dst`.

  `profile` (a `simsam_jax.profiles` name, e.g. "medsam" for MedSAM's
  weights) is recorded in the sidecar.

  Returns the sidecar metadata. Raises CheckpointError listing every problem
  (nothing is written at `dst` then), ValueError for an unknown profile or
  FileExistsError if `dst` exists.
  """
  import os
  from simsam_jax import profiles
  if profile not in profiles.PROFILES:
    raise ValueError(f"--profile={profile!r}: unknown preprocessing profile; known: "
                     f"{', '.join(profiles.names())}")
  if os.path.exists(dst):
    raise FileExistsError(f"--dst {dst} already exists; remove it or choose another")
  src = read_checkpoint(src_path)
  config = infer_config(src)
  flat = convert_tensors(src, config)
  state = to_state(config, flat)
  source = {"format": src.format, "path": os.path.abspath(src_path),
            "sha256": src.sha256, "num_tensors": len(src.tensors)}
  save_checkpoint(dst, state, config, source, profile)
  return read_sidecar(dst)


__all__ = ["CheckpointError", "SourceCheckpoint", "config_from_hf", "config_to_hf",
           "convert_checkpoint", "convert_tensors", "hf_sam_config", "infer_config",
           "load_model", "model_leaves", "read_checkpoint", "read_sidecar", "save_checkpoint",
           "to_state"]
