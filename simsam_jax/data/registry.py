"""The dataset registry: every dataset's name, aliases, builder, default
config and protocol hook, in one place.

Every reader of dataset names goes through it: `loading.get_builder` (which
builder), `protocols.prepare` (which protocol rules), the evaluation config
(`configs/eval.py:DATASET`, the default builder config) and the launchers.
An unknown name or alias gives one message listing the registered names.

Adding a dataset is one module with a builder (a subclass of
`simsam_jax.data.builder.ManualBuilder` for files read from a `manual_dir`,
or of `LocalBuilder` for generated data) and one call:

  from simsam_jax.data import registry

  registry.register(registry.DatasetSpec(
      name="my_dataset", builder=MyDataset, aliases=("mine",),
      default_config="default"))

The built-in datasets register themselves at the end of their modules
(`busi`, `cvc_clinicdb`, `isic2016`, `phantom`, `nifti_folder`), which
`simsam_jax.data` imports; a lookup imports that package first, so the
registry is complete whichever module asks. A user's dataset module is
imported by the user (or by `--config.import_modules` of the evaluation).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, Optional

# (image/mask resize of the `paper` protocol, mask threshold) of one
# dataset under one protocol; see `protocols.Protocol`.
ProtocolHook = Callable[["protocols.Protocol"], tuple[str, int]]  # noqa: F821


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """One registered dataset.

  Attributes:
    name: canonical name (lower case), the TFDS folder name of its builds.
    builder: the builder class (`simsam_jax.data.builder.LocalBuilder`
      subclass), constructed as `builder(data_dir=..., on_bad_example=...,
      [config=...])`.
    aliases: other accepted names (lower case).
    default_config: the builder config an evaluation uses when
      `config.builder_config` is "" ("" = the builder's first config).
    protocol_hook: `hook(protocol) -> (resize, mask_threshold)`, how the
      evaluation protocols treat this dataset: `resize` "pil_default" (PIL,
      as the published `DefaultFileReader`) or "cv2_bilinear" (the published
      `TIFFileReader`), and the raw mask value above which a pixel is
      foreground. None: `protocols.default_rules` (PIL, `mask_threshold`).
  """

  name: str
  builder: type
  aliases: tuple[str, ...] = ()
  default_config: str = ""
  protocol_hook: Optional[ProtocolHook] = None


_SPECS: dict[str, DatasetSpec] = {}
_NAMES: dict[str, str] = {}  # name or alias -> name
_BUILTIN_PACKAGE = "simsam_jax.data"


def register(spec: DatasetSpec) -> DatasetSpec:
  """Adds a dataset; ValueError when its name or an alias is taken."""
  names = [spec.name, *spec.aliases]
  for n in names:
    if n != n.lower():
      raise ValueError(f"dataset {spec.name!r}: names are lower case, got {n!r}")
    if n in _NAMES:
      raise ValueError(f"dataset name {n!r} is already registered "
                       f"(by {_NAMES[n]!r})")
  _SPECS[spec.name] = spec
  _NAMES.update({n: spec.name for n in names})
  return spec


def unregister(name: str) -> None:
  """Removes a dataset and its aliases (tests that register a temporary one)."""
  spec = get(name)
  del _SPECS[spec.name]
  for n in (spec.name, *spec.aliases):
    _NAMES.pop(n, None)


def _load_builtins() -> None:
  importlib.import_module(_BUILTIN_PACKAGE)


def names() -> list[str]:
  """The registered canonical names, sorted."""
  _load_builtins()
  return sorted(_SPECS)


def describe() -> str:
  """"busi, cvc_clinicdb (aliases cvc, cvc612), ...": every registered name."""
  parts = []
  for n in names():
    aliases = _SPECS[n].aliases
    parts.append(f"{n} (aliases {', '.join(aliases)})" if aliases else n)
  return ", ".join(parts)


def get(name: str) -> DatasetSpec:
  """The spec of a dataset name or alias (case-insensitive).

  Raises:
    ValueError: "unknown dataset 'x'; registered datasets: ..." (every
      reader of dataset names gives this one message).
  """
  key = str(name).strip().lower()
  if key not in _NAMES:
    _load_builtins()
  if key not in _NAMES:
    raise ValueError(f"unknown dataset {name!r}; registered datasets: {describe()}")
  return _SPECS[_NAMES[key]]


def canonical(name: str) -> str:
  """The canonical name of a dataset name or alias (ValueError as `get`)."""
  return get(name).name
