"""The one checkpoint resolver: a `--checkpoint` value -> SAM + provenance.

Every launcher (`segment`, `evaluate`, `interactive`, `demo`, `finetune`),
`simsam_jax.Predictor`, the notebooks and the benchmarks resolve a
checkpoint spec here. A spec is one of:

* a converted checkpoint folder (`python -m simsam_jax.convert`; Orbax
  weights and the `simsam_jax.json` sidecar);
* `random:PRESET[:SEED]`: randomly initialised weights
  (`build_sam(get_preset(PRESET), SEED)`, SEED 0 by default; smoke tests and
  benchmarks only, the masks mean nothing);
* an official SAM `.pth`, a Hugging Face `model.safetensors` or a Hugging
  Face model folder: converted in memory by the converter
  (`checkpoint.read_checkpoint` / `infer_config` / `convert_tensors` /
  `to_state`), with a log line suggesting to convert once (converting takes
  seconds to minutes for ViT-H; restoring a converted folder does not).

The provenance (`describe_checkpoint`) is one JSON-ready dict with the keys
`spec`, `random_weights`, `preset`, `seed`, `path`, `source_format`,
`source_sha256`, `source_path`, `source` (the sidecar's whole `source`
block, e.g. a fine-tuned export's base checkpoint; None for random weights),
`image_size`, `profile` (the recorded preprocessing profile; "sam" for random
weights and raw sources) and, once loaded, `architecture` (the preset name or
"custom").

Errors are `CheckpointSpecError` (a ValueError) whose message starts with
`FLAG=SPEC:` where FLAG names the caller's flag (`--checkpoint`,
`--config.checkpoint`), raised before any weight is read when the spec
itself is wrong.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

from absl import logging

from simsam_jax.checkpoint.converter import convert_tensors, to_state
from simsam_jax.checkpoint.sources import CheckpointError, infer_config, read_checkpoint
from simsam_jax.checkpoint.store import DEFAULT_PROFILE, load_model, matching_preset, read_sidecar
from simsam_jax.modeling import build_sam, get_preset
from simsam_jax.modeling.policy import Policy

RANDOM_PREFIX = "random"
CHECKPOINT_FLAG = "--checkpoint"
# Files converted in memory (`sources.read_checkpoint` decides the format).
RAW_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


class CheckpointSpecError(ValueError):
  """A checkpoint spec that cannot be used; the message names the flag."""


def parse_random_spec(spec: str, flag: str = CHECKPOINT_FLAG
                      ) -> Optional[Tuple[str, int]]:
  """`random:PRESET[:SEED]` -> (preset, seed); None for anything else.

  Raises:
    CheckpointSpecError: for a malformed `random:...` string or an unknown
      preset.
  """
  if spec != RANDOM_PREFIX and not spec.startswith(RANDOM_PREFIX + ":"):
    return None
  parts = spec.split(":")
  if len(parts) not in (2, 3) or not parts[1]:
    raise CheckpointSpecError(f"{flag}={spec!r}: expected random:PRESET or "
                              "random:PRESET:SEED")
  preset = parts[1]
  try:
    get_preset(preset)
  except ValueError as error:
    raise CheckpointSpecError(f"{flag}={spec!r}: {error}") from None
  seed = 0
  if len(parts) == 3:
    if not parts[2].isdigit():
      raise CheckpointSpecError(f"{flag}={spec!r}: the seed must be a "
                                f"non-negative integer, got {parts[2]!r}")
    seed = int(parts[2])
  return preset, seed


def is_raw_source(spec: str) -> bool:
  """True for an official `.pth`, a `.safetensors` file or a Hugging Face
  folder (a folder with `config.json` and no `simsam_jax.json` sidecar)."""
  if os.path.isfile(spec):
    return spec.lower().endswith(RAW_SUFFIXES)
  return (os.path.isdir(spec) and os.path.isfile(os.path.join(spec, "config.json"))
          and not os.path.isfile(os.path.join(spec, "simsam_jax.json")))


def _problems(spec: str, flag: str, error: CheckpointError) -> CheckpointSpecError:
  return CheckpointSpecError(f"{flag}={spec!r}: " + "; ".join(error.problems))


def describe_checkpoint(spec: str, flag: str = CHECKPOINT_FLAG) -> dict:
  """Checks a spec cheaply (no weights read for folders) and describes it.

  Args:
    spec: a converted folder, `random:PRESET[:SEED]`, or a raw source (an
      official `.pth`, `model.safetensors`, a Hugging Face folder; its
      tensors are read to infer the architecture).
    flag: the caller's flag, named in error messages.

  Returns:
    The provenance dict (module docstring), without `architecture`.

  Raises:
    CheckpointSpecError: for a missing folder, an unreadable sidecar or
      source, a malformed random spec or an unknown preset.
  """
  random_spec = parse_random_spec(spec, flag)
  if random_spec is not None:
    preset, seed = random_spec
    return {"spec": spec, "random_weights": True, "preset": preset,
            "seed": seed, "path": None, "source_format": None,
            "source_sha256": None, "source_path": None, "source": None,
            "image_size": get_preset(preset).image_size,
            "profile": DEFAULT_PROFILE}
  if not os.path.exists(spec):
    raise CheckpointSpecError(f"{flag}={spec!r}: checkpoint folder not found")
  if is_raw_source(spec):
    return _read_raw(spec, flag)[0]
  if not os.path.isdir(spec):
    raise CheckpointSpecError(
        f"{flag}={spec!r}: not a folder (expected a converted checkpoint "
        "folder, an official .pth, a model.safetensors, a Hugging Face "
        "folder or random:PRESET[:SEED])")
  try:
    sidecar = read_sidecar(spec)
  except CheckpointError as error:
    raise _problems(spec, flag, error) from None
  source = sidecar.get("source") or {}
  return {"spec": spec, "random_weights": False,
          "preset": sidecar.get("preset"), "seed": None,
          "path": os.path.abspath(spec),
          "source_format": source.get("format"),
          "source_sha256": source.get("sha256"),
          "source_path": source.get("path"),
          "source": sidecar.get("source"),
          "image_size": sidecar["config"].image_size,
          "profile": sidecar["profile"]}


def _read_raw(spec: str, flag: str):
  """(description, SourceCheckpoint, SamConfig) of a raw source."""
  try:
    src = read_checkpoint(spec)
    config = infer_config(src)
  except CheckpointError as error:
    raise _problems(spec, flag, error) from None
  source = {"format": src.format, "path": os.path.abspath(spec),
            "sha256": src.sha256, "num_tensors": len(src.tensors)}
  description = {"spec": spec, "random_weights": False,
                 "preset": matching_preset(config), "seed": None,
                 "path": os.path.abspath(spec), "source_format": src.format,
                 "source_sha256": src.sha256, "source_path": source["path"],
                 "source": source, "image_size": config.image_size,
                 "profile": DEFAULT_PROFILE}
  return description, src, config


def resolve_checkpoint(spec: str, policy: Policy = Policy(),
                       flag: str = CHECKPOINT_FLAG):
  """Loads (or randomly builds, or converts in memory) SAM from a spec.

  Args:
    spec: see the module docstring.
    policy: compute precision and attention implementation of the model
      (`modeling.policy`); the weights are float32 either way.
    flag: the caller's flag, named in error messages.

  Returns:
    (model, description): a `modeling.Sam` computing under `policy` and the
    provenance dict (with `architecture`).

  Raises:
    CheckpointSpecError: as `describe_checkpoint`, or when the weights
      cannot be restored or converted.
  """
  options = {"dtype": policy.precision, "attention_impl": policy.attention_impl}
  random_spec = parse_random_spec(spec, flag)
  if random_spec is not None:
    description = describe_checkpoint(spec, flag)
    model = build_sam(get_preset(random_spec[0]), random_spec[1], **options)
  elif os.path.exists(spec) and is_raw_source(spec):
    description, src, config = _read_raw(spec, flag)
    try:
      state = to_state(config, convert_tensors(src, config))
    except CheckpointError as error:
      raise _problems(spec, flag, error) from None
    from flax import nnx  # pylint: disable=import-outside-toplevel
    from simsam_jax.modeling.sam import split_abstract_sam  # pylint: disable=import-outside-toplevel
    model = nnx.merge(split_abstract_sam(config, policy)[0], state)
    logging.warning("%s=%s: converted in memory from %s; convert it once with "
                    "`python -m simsam_jax.convert --src=%s --dst=FOLDER` and "
                    "pass the folder to load faster.", flag, spec, src.format, spec)
  else:
    description = describe_checkpoint(spec, flag)
    try:
      model = load_model(spec, **options)
    except CheckpointError as error:
      raise _problems(spec, flag, error) from None
  description["architecture"] = description["preset"] or "custom"
  return model, description
