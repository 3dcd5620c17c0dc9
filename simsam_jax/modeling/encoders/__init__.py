"""Image encoders of `Sam`, one registered family per module.

A family is one module that defines:

  * a frozen dataclass config, subclass of `EncoderConfig`, whose class
    attribute `family` names it; `SamConfig.encoder` holds one, and the
    checkpoint sidecar stores it nested (`{"family": "vit", ...}`);
  * an `nnx.Module` built as `Module(sam_config, rngs=..., policy=...)` whose
    `__call__` maps (B, S, S, 3) float32 normalised pixels (S =
    `sam_config.image_size`) to (B, G, G, `sam_config.prompt_embed_dim`)
    float32 image embeddings, G = S // `config.stride`; `Sam` keeps it as its
    `image_encoder` attribute, so state paths start with `image_encoder.`;
  * for conversion, the key rules of its tensors per naming convention
    ("official" = `segment_anything` names, "hugging_face" = `SamModel`
    names; see `simsam_jax.checkpoint.key_tables`), a detection hook that says
    which naming convention a checkpoint's tensor names use when they are of
    this family, and hooks that infer the encoder config from the tensors or
    from a Hugging Face `vision_config` (and, optionally, write one),

and calls `register_encoder(EncoderFamily(...))`. The ViT of SAM
(`encoders.vit`) is registered here; nothing else is edited to add a family.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Mapping, Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """Base of the encoder configs: (de)serialisation and the shared contract.

  Subclasses are frozen dataclasses (hashable: models are cached per config)
  that set the class attribute `family` and implement `stride` and, when
  they have constraints, `problems`.
  """

  family: ClassVar[str] = ""

  @property
  def stride(self) -> int:
    """Input pixels per image-embedding cell (16 for SAM's ViT)."""
    raise NotImplementedError

  def problems(self, image_size: int) -> list[str]:
    """Reasons this config cannot build an encoder for `image_size` inputs."""
    del image_size
    return []

  def to_dict(self) -> dict[str, Any]:
    d = {"family": self.family}
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      d[f.name] = list(value) if isinstance(value, tuple) else value
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "EncoderConfig":
    d = {k: v for k, v in d.items() if k != "family"}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"Unknown {cls.__name__} fields: {unknown}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


Rules = tuple[tuple[str, str, str], ...]


@dataclasses.dataclass(frozen=True)
class EncoderFamily:
  """One registered image-encoder family.

  Attributes:
    name: the family key ("vit"), equal to `config.family`.
    module: the `nnx.Module` class (see the module docstring for its contract).
    config: its `EncoderConfig` subclass.
    key_rules: naming convention -> key rules of the encoder's tensors, each
      `(regex over the source key, target path under image_encoder., layout)`
      (`checkpoint.key_tables`). A callable returning that mapping is
      accepted, for modules that build rules with `checkpoint.key_tables`
      helpers (imported when a checkpoint is converted, not at import time).
    detect: tensor names -> the naming convention ("official" /
      "hugging_face") if the checkpoint holds this family's encoder, else None.
    infer: (tensors, naming) -> (encoder config, image_size or None): the
      architecture read from the tensor shapes; raises KeyError naming a
      missing tensor or ValueError.
    from_hf: a Hugging Face `vision_config` dict -> (encoder config,
      image_size), or None when the family has no Hugging Face port.
    to_hf: the inverse of `from_hf`: (encoder config, image_size,
      output_channels) -> a Hugging Face `vision_config` dict, or None.
  """

  name: str
  module: type
  config: type
  key_rules: Any
  detect: Callable[[frozenset], Optional[str]]
  infer: Callable[[Mapping[str, np.ndarray], str], tuple[EncoderConfig, Optional[int]]]
  from_hf: Optional[Callable[[Mapping[str, Any]], tuple[EncoderConfig, int]]] = None
  to_hf: Optional[Callable[[EncoderConfig, int, int], dict[str, Any]]] = None

  def rules(self, naming: str) -> Rules:
    """Key rules for `naming`; ValueError when the family has none."""
    table = self.key_rules() if callable(self.key_rules) else self.key_rules
    if naming not in table:
      raise ValueError(f"encoder family {self.name!r} has no {naming!r} key table; "
                       f"it has: {sorted(table)}")
    return tuple(table[naming])


ENCODERS: dict[str, EncoderFamily] = {}


def register_encoder(family: EncoderFamily, *, replace: bool = False) -> EncoderFamily:
  """Adds `family` to the registry; ValueError if the name is taken.

  `replace=True` overwrites an existing entry (tests, notebooks reloading a
  module).
  """
  if family.config.family != family.name:
    raise ValueError(f"encoder family {family.name!r}: its config class "
                     f"{family.config.__name__} says family={family.config.family!r}")
  if family.name in ENCODERS and not replace:
    raise ValueError(f"encoder family {family.name!r} is already registered")
  ENCODERS[family.name] = family
  return family


def unregister_encoder(name: str) -> None:
  ENCODERS.pop(name, None)


def get_encoder(name: str) -> EncoderFamily:
  """The registered family `name`; ValueError listing the registered ones."""
  if name not in ENCODERS:
    raise ValueError(f"Unknown image encoder family {name!r}; registered: {sorted(ENCODERS)}")
  return ENCODERS[name]


def family_of(config: EncoderConfig) -> EncoderFamily:
  """The registered family of an encoder config."""
  return get_encoder(config.family)


def encoder_config_from_dict(d: Mapping[str, Any]) -> EncoderConfig:
  """Inverse of `EncoderConfig.to_dict`: the "family" key picks the class."""
  if not isinstance(d, Mapping) or "family" not in d:
    raise ValueError(f"encoder config must be a dict with a 'family' key; got {d!r}")
  return get_encoder(d["family"]).config.from_dict(d)


def detect_family(keys) -> Optional[tuple[EncoderFamily, str]]:
  """(family, naming convention) of a checkpoint from its tensor names.

  Families are asked in registration order; the first that recognises the
  names wins. None when none does.
  """
  keys = frozenset(keys)
  for family in ENCODERS.values():
    naming = family.detect(keys)
    if naming is not None:
      return family, naming
  return None


# Built-in families (imported last: they register themselves).
from simsam_jax.modeling.encoders import vit  # noqa: E402,F401

__all__ = ["ENCODERS", "EncoderConfig", "EncoderFamily", "detect_family",
           "encoder_config_from_dict", "family_of", "get_encoder", "register_encoder",
           "unregister_encoder"]
