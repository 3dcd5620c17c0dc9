"""A generated, deterministic ultrasound-like dataset: `phantom`.

Lets the whole evaluation (and fine-tuning) run with no download: every
example is `simsam_jax.synthetic.phantom(height, width, seed)`, a grey speckle
image with one dark, irregular lesion whose boundary is soft and noisy, and
the lesion's exact ground-truth mask. The same config always builds the same
bytes.

Examples are stored with the features of the real datasets (see
`builder.common_features`), so `protocols.prepare`, the metrics and the
launchers treat them like BUSI images:

* `id`: `phantom_007`.
* `image`: (H, W, 3) uint8, channels equal; `mask`: (H, W) uint8 in {0, 255},
  `mask_mode` "1" (like BUSI's 1-bit PNG masks: the paper protocol resizes it
  with nearest neighbour).
* `image_file`: `synthetic:SEED:HxW`, the `--image` value with which
  `python -m simsam_jax.segment` redraws exactly this image; `mask_files`:
  the same string; `source_format`: "synthetic".
* `seed`: the phantom's seed.

Image sizes are drawn per example (seeded) between `min_side` and
`max_side`, so a run meets several input shapes as with real data. Splits
are contiguous seed ranges: train, then validation, then test.

Configs: `default` (16 train / 8 validation / 24 test, sides 160-320) and
`small` (4 / 2 / 4, sides 64-96) for quick checks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterator, Tuple

import numpy as np
import tensorflow_datasets as tfds

from simsam_jax import synthetic
from simsam_jax.data import registry
from simsam_jax.data import common
from simsam_jax.data.builder import LocalBuilder, common_features

SPLITS = ("train", "validation", "test")
# Seeds of the size draws are offset from the image seeds, so that the size
# and the content of an example are independent streams.
_SIZE_SEED_OFFSET = 1_000_003


@dataclasses.dataclass
class PhantomConfig(tfds.core.BuilderConfig):
  """How many phantoms per split and their size range.

  Attributes:
    num_train, num_validation, num_test: examples per split (>= 0; a split
      with none is left out of the built dataset).
    min_side, max_side: inclusive range of the image height and width in
      pixels (>= 16).
  """

  num_train: int = 16
  num_validation: int = 8
  num_test: int = 24
  min_side: int = 160
  max_side: int = 320

  def split_sizes(self) -> Dict[str, int]:
    return {"train": self.num_train, "validation": self.num_validation,
            "test": self.num_test}


def example_size(seed: int, min_side: int, max_side: int) -> Tuple[int, int]:
  """(height, width) of the phantom with `seed`, drawn in [min_side, max_side]."""
  rng = np.random.default_rng(_SIZE_SEED_OFFSET + int(seed))
  height, width = rng.integers(min_side, max_side + 1, size=2)
  return int(height), int(width)


def split_seeds(config: PhantomConfig) -> Dict[str, range]:
  """{split: range of seeds}: train from 0, then validation, then test."""
  seeds, start = {}, 0
  for split, count in config.split_sizes().items():
    seeds[split] = range(start, start + int(count))
    start += int(count)
  return seeds


def make_example(seed: int, min_side: int, max_side: int) -> Dict[str, Any]:
  """The stored example of the phantom with `seed` (see the module docstring)."""
  height, width = example_size(seed, min_side, max_side)
  image, mask, _ = synthetic.phantom(height, width, seed=seed)
  spec = f"synthetic:{seed}:{height}x{width}"
  return {
      "id": f"phantom_{seed:03d}",
      "image": image,
      "mask": mask.astype(np.uint8) * 255,
      "mask_mode": "1",
      "height": np.int32(height),
      "width": np.int32(width),
      "image_file": spec,
      "mask_files": [spec],
      "source_format": "synthetic",
      "seed": np.int32(seed),
  }


class Phantom(LocalBuilder):
  """Generated ultrasound-like lesions with exact masks (no manual_dir)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      PhantomConfig(name="default", description=(
          "16 train / 8 validation / 24 test phantoms, sides 160-320 px.")),
      PhantomConfig(name="small", num_train=4, num_validation=2, num_test=4,
                    min_side=64, max_side=96, description=(
                        "4 / 2 / 4 phantoms, sides 64-96 px (quick checks).")),
  ]

  def __init__(self, *, on_bad_example: str = "raise", **kwargs: Any):
    """Constructs the builder.

    Args:
      on_bad_example: accepted for the signature of the other builders
        ("raise" or "skip"); generated examples are never bad.
      **kwargs: `data_dir`, `config`, `version` of `tfds.core.DatasetBuilder`.
    """
    common.check_on_bad_example(on_bad_example)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    if min(config.min_side, config.max_side) < synthetic.MIN_SIDE or (
        config.min_side > config.max_side):
      raise ValueError(f"phantom config {config.name!r}: need "
                       f"{synthetic.MIN_SIDE} <= min_side <= max_side, got "
                       f"{config.min_side}, {config.max_side}")
    return self.dataset_info_from_configs(
        description=("Synthetic ultrasound-like images, each with one dark "
                     "lesion with a soft, noisy boundary, and its exact mask."),
        features=common_features(seed=tfds.features.Scalar(dtype=np.int32)),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    config = self.builder_config
    seeds = split_seeds(config)
    self.info.metadata.update({
        "dataset": self.name, "config": config.name,
        "seeds": {s: [r.start, r.stop] for s, r in seeds.items()},
        "absent_splits": [s for s in SPLITS if not len(seeds[s])],
    })
    return {split: self._generate(seeds[split]) for split in SPLITS
            if len(seeds[split])}

  def _generate(self, seeds: range) -> Iterator[Tuple[str, Dict[str, Any]]]:
    config = self.builder_config
    for seed in seeds:
      example = make_example(seed, config.min_side, config.max_side)
      yield example["id"], example


registry.register(registry.DatasetSpec(
    name="phantom", builder=Phantom, default_config="default"))
