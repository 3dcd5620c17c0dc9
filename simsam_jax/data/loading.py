"""Build-if-needed loading of the datasets as numpy dicts (no TensorFlow).

`load_split("busi", "test", data_dir, manual_dir, config="paper437")` builds
the dataset into `data_dir` the first time (ArrayRecord files), then reads
the split back through `builder.as_data_source()`. Text features come back
as `str` (TFDS gives bytes), `mask_files` as a tuple of `str`, `label` (BUSI)
as the class name, and each example gets the `split` it came from.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
from typing import Any, Dict, Iterator, List, Optional, Union

import numpy as np
import tensorflow_datasets as tfds

from simsam_jax import console
from simsam_jax.data import builder as builder_lib
from simsam_jax.data import registry
SPLITS = ("train", "validation", "test")
PathLike = Union[str, os.PathLike]


def get_builder(name: str, data_dir: PathLike, config: Optional[str] = None,
                on_bad_example: str = "raise") -> builder_lib.LocalBuilder:
  """The builder of dataset `name`, a name or alias of
  `simsam_jax.data.registry` (ValueError listing the registered ones)."""
  cls = registry.get(name).builder
  kwargs: Dict[str, Any] = {"data_dir": os.fspath(data_dir),
                            "on_bad_example": on_bad_example}
  if config is not None:
    kwargs["config"] = config
  return cls(**kwargs)


def prepare_builder(name: str, data_dir: PathLike,
                    manual_dir: Optional[PathLike] = None,
                    config: Optional[str] = None,
                    on_bad_example: str = "raise") -> builder_lib.LocalBuilder:
  """`get_builder`, then `download_and_prepare` from `manual_dir` if needed.

  Several processes may call this at once on one `data_dir` (the shards of an
  evaluation, two jobs of a user): the build is serialised by an exclusive
  `fcntl` lock on `data_dir/.NAME.lock`, so one process builds and the
  others then find the dataset built.
  """
  download_config = tfds.download.DownloadConfig(
      manual_dir=None if manual_dir is None else os.fspath(manual_dir))
  os.makedirs(os.fspath(data_dir), exist_ok=True)
  lock_path = os.path.join(os.fspath(data_dir),
                           f".{registry.canonical(name)}.lock")
  with open(lock_path, "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      # Constructed under the lock: sees a dataset another process just built.
      builder = get_builder(name, data_dir, config, on_bad_example)
      with console.library_stdout():  # TFDS prints its "Downloading and preparing"
        builder.download_and_prepare(download_config=download_config,
                                     file_format="array_record")
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
  return builder


def _to_python(name: str, value: Any, feature: Any) -> Any:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if name == "mask_files":
    return tuple(v.decode("utf-8") if isinstance(v, bytes) else str(v)
                 for v in np.atleast_1d(value))
  if isinstance(feature, tfds.features.ClassLabel):
    return feature.int2str(int(value))
  if isinstance(value, np.ndarray) and value.ndim == 0:
    return value.item()
  return value


def iter_split(builder: builder_lib.LocalBuilder, split: str
               ) -> Iterator[Dict[str, Any]]:
  """Examples of one built split (or "all") as numpy/python dicts."""
  available = [s for s in SPLITS if s in builder.info.splits]
  if split == "all":
    wanted = available
  elif split in builder.info.splits:
    wanted = [split]
  else:
    metadata = builder.info.metadata or {}
    config = builder.builder_config.name if builder.builder_config else ""
    raise ValueError(
        f"{builder.name}/{config}: split {split!r} is not in the built "
        f"dataset (available: "
        f"{available}; absent because empty: "
        f"{metadata.get('absent_splits', [])})")
  features = builder.info.features
  for name in wanted:
    source = builder.as_data_source(split=name)
    for i in range(len(source)):
      example = source[i]
      out = {key: _to_python(key, value, features[key])
             for key, value in example.items()}
      out["split"] = name
      yield out


def load_split(name: str, split: str, data_dir: PathLike,
               manual_dir: Optional[PathLike] = None,
               config: Optional[str] = None,
               on_bad_example: str = "raise") -> List[Dict[str, Any]]:
  """Builds the dataset if needed and returns one split as numpy dicts.

  Args:
    name: a registered dataset name or alias (`simsam_jax.data.registry`).
    split: "train", "validation", "test" or "all" (every built split, in
      that order).
    data_dir: TFDS data folder (the dataset goes to
      `data_dir/<name>/<config>/<version>`).
    manual_dir: folder holding the dataset as distributed (needed for the
      first build only).
    config: builder config (BUSI: "paper437" (default),
      "paper437_last_mask", "full", "full_with_normal").
    on_bad_example: "raise" or "skip" (first build only).

  Returns:
    One dict per example: "id" str, "image" (H, W, 3) uint8, "mask" (H, W)
    uint8 raw, "mask_mode" str, "height"/"width" int, "image_file" str,
    "mask_files" tuple of str, "source_format" str, dataset extras ("label"
    str and "case_number" for BUSI, "frame" for CVC, "official_split" for
    ISIC) and "split".

  Raises:
    DatasetError: on bad input while building (see the builders).
    ValueError: when `split` is not in the built dataset.
  """
  builder = prepare_builder(name, data_dir, manual_dir, config, on_bad_example)
  return list(iter_split(builder, split))


def build_metadata(builder: builder_lib.LocalBuilder) -> Dict[str, Any]:
  """The build record (`metadata.json`) of a built dataset, as a dict."""
  return dict(builder.info.metadata or {})


def skipped_examples(builder_or_dir: Union[builder_lib.LocalBuilder, PathLike]
                     ) -> List[Dict[str, Any]]:
  """The files skipped by `on_bad_example="skip"` when the dataset was built.

  Args:
    builder_or_dir: a built builder, or its dataset folder
      (`data_dir/<name>/<config>/<version>`).

  Returns:
    One dict per skipped file: "id", "path", "file" (relative to the
    manual_dir) and "reason".
  """
  if isinstance(builder_or_dir, builder_lib.LocalBuilder):
    folder = pathlib.Path(os.fspath(builder_or_dir.data_dir))
  else:
    folder = pathlib.Path(builder_or_dir)
  return json.loads((folder / builder_lib.SKIPPED_FILE).read_text())
