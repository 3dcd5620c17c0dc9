"""Base classes of the TFDS builders of this package (public: a new dataset subclasses them).

Every builder here reads a dataset exactly as distributed from a TFDS
`manual_dir`, and writes ArrayRecord files that TFDS reads back with numpy
alone (no TensorFlow):

* `download_and_prepare` defaults to `file_format="array_record"` (the TFDS
  default, TFRecord, needs TensorFlow).
* Features are `Text`, `Scalar` and `Tensor` (ZLIB-encoded for images and
  masks), which encode and decode without TensorFlow; file lists are a 1-D
  string `Tensor`.
* Examples are written in canonical id order (`disable_shuffling=True`).

Generation runs in three steps: `_scan` finds the examples (file names only),
`_assign_splits` puts each into a split, a header check compares image and
mask sizes; then each split's examples are decoded and written. Bad input
raises `DatasetError` naming the file, or, with `on_bad_example="skip"`, is
recorded and skipped. The record of a build (skipped files, ids of the split
lists that are absent from the manual_dir, ids left out by the config, unused
files) is stored in the dataset's `metadata.json` (`builder.info.metadata`)
and the skipped files also in `skipped.json` beside it.

A split with no example present is left out of the built dataset (TFDS
cannot write an empty split); `metadata["absent_splits"]` names it.
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
import json
import os
import pathlib
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from etils import epath
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import utils as tfds_utils

from simsam_jax.data import common
from simsam_jax.data.common import BadExamples, DatasetError, FileRef

SKIPPED_FILE = "skipped.json"

_ZLIB = tfds.features.Encoding.ZLIB


@dataclasses.dataclass
class Record:
  """One example found in the manual_dir, before decoding.

  Attributes:
    id: example id (`benign_15`, `cvc_12`, `ISIC_0000000`).
    image: the image file.
    masks: the mask files used (merged by union when several).
    source_format: "png", "tiff" or "jpeg" (of the image file).
    extra: dataset-specific features (label, frame number, ...).
    split: split name once assigned.
  """

  id: str
  image: FileRef
  masks: List[FileRef]
  source_format: str
  extra: Dict[str, Any] = dataclasses.field(default_factory=dict)
  split: Optional[str] = None


def source_format(ref: FileRef) -> str:
  """"tiff", "jpeg", "png" (or the bare suffix) of a file."""
  suffix = ref.suffix.lstrip(".")
  return {"tif": "tiff", "jpg": "jpeg"}.get(suffix, suffix)


def common_features(**extra: Any) -> tfds.features.FeaturesDict:
  """The features every dataset of this package has, plus `extra`."""
  return tfds.features.FeaturesDict({
      "id": tfds.features.Text(doc="example id"),
      "image": tfds.features.Tensor(
          shape=(None, None, 3), dtype=np.uint8, encoding=_ZLIB,
          doc="RGB image at original resolution"),
      "mask": tfds.features.Tensor(
          shape=(None, None), dtype=np.uint8, encoding=_ZLIB,
          doc="RAW ground truth, one channel (max over colour channels; "
              "1-bit as 0/255; several masks merged by max)"),
      "mask_mode": tfds.features.Text(
          doc="PIL mode of the mask file(s) ('1', 'L', 'P', 'RGB', ...)"),
      "height": tfds.features.Scalar(dtype=np.int32),
      "width": tfds.features.Scalar(dtype=np.int32),
      "image_file": tfds.features.Text(doc="image path relative to manual_dir"),
      "mask_files": tfds.features.Tensor(
          shape=(None,), dtype=np.str_,
          doc="mask paths relative to manual_dir"),
      "source_format": tfds.features.Text(doc="png, tiff or jpeg"),
      **extra,
  })


class LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder that writes ArrayRecord files and needs no TFDS download step."""

  @tfds_utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """The builder's source file.

    TFDS's own `code_path` touches the `importlib_resources` backport, which
    is not a dependency here (and not installed); the source file is all it
    is used for (looking up a `checksums.tsv`, of which manual datasets have
    none).
    """
    return epath.Path(inspect.getfile(cls))

  @classmethod
  def _get_pkg_dir_path(cls) -> epath.Path:
    """The folder of the builder's source file, where TFDS looks for
    README / CITATIONS files (TFDS resolves the module's package instead,
    which fails for a builder in a top-level module, e.g. a user's dataset
    module on `sys.path`)."""
    return cls.code_path.parent

  def download_and_prepare(self, *, file_format=None, **kwargs: Any) -> None:
    """`tfds.core.DatasetBuilder.download_and_prepare`, ArrayRecord default."""
    return super().download_and_prepare(
        file_format=file_format or "array_record", **kwargs)

  def _download_and_prepare(self, dl_manager, download_config=None) -> None:
    super()._download_and_prepare(dl_manager, download_config)
    # self.data_dir is the temporary folder that becomes the dataset folder.
    # Every built dataset has the file (empty when nothing was skipped).
    skipped = list((self.info.metadata or {}).get("skipped", []))
    path = pathlib.Path(os.fspath(self.data_dir)) / SKIPPED_FILE
    path.write_text(json.dumps(skipped, indent=1) + "\n")

  def _generate_examples(self, *args, **kwargs):  # pragma: no cover
    raise NotImplementedError("examples come from the generators that "
                              "`_split_generators` returns")


class ManualBuilder(LocalBuilder, skip_registration=True):
  """Common machinery; subclasses implement `_scan` and `_assign_splits`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def __init__(self, *, on_bad_example: str = "raise", **kwargs: Any):
    """Constructs the builder.

    Args:
      on_bad_example: "raise" (default): bad input raises `DatasetError`;
        "skip": the bad example is left out and recorded (see
        `skipped_examples`). Only used when the dataset is generated; an
        already built data_dir is reused as it is.
      **kwargs: `data_dir`, `config`, `version` of `tfds.core.DatasetBuilder`.
    """
    self._on_bad_example = common.check_on_bad_example(on_bad_example)
    super().__init__(**kwargs)
    # Kept by pickling (TFDS rebuilds a builder from `_original_state`).
    self._original_state["on_bad_example"] = self._on_bad_example

  # -- TFDS hooks --------------------------------------------------------------

  def _split_generators(self, dl_manager):
    root = self._manual_root(dl_manager)
    bad = BadExamples(self._on_bad_example, records=[])
    metadata = self.info.metadata
    metadata.clear()
    metadata.update({
        "dataset": self.name,
        "config": self.builder_config.name if self.builder_config else None,
        "manual_dir": os.fspath(root),
        "on_bad_example": self._on_bad_example,
        "skipped": bad.records,
        "ignored_files": [],
        "unused_files": [],
        "excluded_ids": [],
        "missing_ids": {},
    })
    records = self._scan(root, bad, metadata)
    splits = self._assign_splits(records, bad, metadata)
    checked: Dict[str, List[Record]] = {}
    for split, split_records in splits.items():
      checked[split] = [r for r in split_records if self._check_sizes(r, bad)]
    metadata["absent_splits"] = sorted(s for s, rs in checked.items() if not rs)
    if not any(checked.values()):
      raise DatasetError(
          f"{self.name}: no usable example found in the manual_dir {root} "
          f"(skipped: {len(bad.records)}). Expected layout:\n"
          f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}", path=root)
    return {split: self._generate(split_records, bad)
            for split, split_records in checked.items() if split_records}

  # -- helpers -----------------------------------------------------------------

  def _manual_root(self, dl_manager) -> pathlib.Path:
    given = getattr(dl_manager, "_manual_dir", None)
    try:
      manual_dir = dl_manager.manual_dir
    except AssertionError as error:
      raise DatasetError(
          f"{self.name}: manual_dir {given} does not exist or is empty. "
          f"Put the dataset there as distributed:\n"
          f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}", path=given) from error
    return pathlib.Path(os.fspath(manual_dir)).resolve()

  def _check_sizes(self, record: Record, bad: BadExamples) -> bool:
    """Header check: every mask has the image's size (False: skipped)."""
    try:
      size = common.read_size(record.image)
      for mask in record.masks:
        mask_size = common.read_size(mask)
        if mask_size != size:
          raise DatasetError(
              f"mask {mask.display} has size (H, W) = {mask_size} but its "
              f"image {record.image.rel} has {size}", path=mask.display,
              example_id=record.id)
    except DatasetError as error:
      error.example_id = error.example_id or record.id
      bad.handle(error, file=_rel_of(error, record))
      return False
    return True

  def _load(self, record: Record) -> Dict[str, Any]:
    image = common.read_image(record.image)
    masks = []
    for ref in record.masks:
      raw, mode = common.read_mask(ref)
      if raw.shape != image.shape[:2]:
        raise DatasetError(
            f"mask {ref.display} has size (H, W) = {raw.shape} but its image "
            f"{record.image.rel} has {image.shape[:2]}", path=ref.display,
            example_id=record.id)
      masks.append((raw, mode))
    mask, mode = common.merge_masks(masks)
    example = {
        "id": record.id,
        "image": image,
        "mask": mask,
        "mask_mode": mode,
        "height": np.int32(image.shape[0]),
        "width": np.int32(image.shape[1]),
        "image_file": record.image.rel,
        "mask_files": [m.rel for m in record.masks],
        "source_format": record.source_format,
    }
    example.update(record.extra)
    return example

  def _generate(self, records: Sequence[Record], bad: BadExamples
                ) -> Iterator[Tuple[str, Dict[str, Any]]]:
    for record in records:
      try:
        example = self._load(record)
      except DatasetError as error:
        error.example_id = error.example_id or record.id
        bad.handle(error, file=_rel_of(error, record))
        continue
      yield record.id, example

  def _assign_from_lists(self, records: Sequence[Record],
                         split_lists: Dict[str, List[str]], bad: BadExamples,
                         metadata: Dict[str, Any]) -> Dict[str, List[Record]]:
    """Splits by committed id lists; records which listed ids are absent.

    Records whose id is in no list must have been handled by the caller.
    """
    by_id = {r.id: r for r in records}
    splits: Dict[str, List[Record]] = {}
    for split, ids in split_lists.items():
      splits[split] = []
      missing = []
      for example_id in ids:
        record = by_id.get(example_id)
        if record is None:
          missing.append(example_id)
          continue
        record.split = split
        splits[split].append(record)
      metadata["missing_ids"][split] = missing
    metadata["num_listed_ids"] = {s: len(ids) for s, ids in split_lists.items()}
    metadata["num_missing_ids"] = {
        s: len(ids) for s, ids in metadata["missing_ids"].items()}
    return splits

  # -- dataset specific --------------------------------------------------------

  @abc.abstractmethod
  def _scan(self, root: pathlib.Path, bad: BadExamples,
            metadata: Dict[str, Any]) -> List[Record]:
    """Finds the examples in `root` (the manual_dir), file names only."""

  @abc.abstractmethod
  def _assign_splits(self, records: List[Record], bad: BadExamples,
                     metadata: Dict[str, Any]) -> Dict[str, List[Record]]:
    """Returns {split: records in canonical order}."""


def _rel_of(error: DatasetError, record: Record) -> Optional[str]:
  """The manual_dir-relative name of the file an error is about."""
  for ref in [record.image] + list(record.masks):
    if error.path in (ref.display, os.fspath(ref.path)):
      return ref.rel
  return record.image.rel


def require_dir(root: pathlib.Path, rel: str, dataset: str) -> pathlib.Path:
  """`root / rel`, which must be a folder, else a `DatasetError`."""
  path = root / rel
  if not path.is_dir():
    raise DatasetError(f"{dataset}: required folder {path} is missing from the "
                       "manual_dir", path=path)
  return path
