"""Shared pieces of the dataset builders: file references, readers, errors.

The builders in this package read the datasets exactly as they are
distributed (folders or zip files in a TFDS `manual_dir`). This module holds
what they share:

* `DatasetError`, the one error type for bad input (missing `manual_dir` or
  folder, unreadable file, image without mask, mask of another size, ...).
  Its message and its `path` attribute name the offending file.
* `FileRef`, a file either on disk or inside a zip archive, named by its path
  relative to the `manual_dir` (`"Original/12.tif"`; a member of a zip is
  named like `zipfile.Path` names it, archive name then member path:
  `"ISBI2016_ISIC_Part1_Training_Data.zip/<member path>"`).
* `read_image` / `read_mask`: `processing.read_file`, the one reader of the
  project, under its dataset policies (`DATASET_IMAGE`, `DATASET_MASK`):
  Pillow, or `tifffile` for `.tif`/`.tiff` (Pillow cannot open
  CVC-ClinicDB's 3-sample MinIsBlack TIFF frames); `read_size` reads the
  header only.
* `BadExamples`: the `on_bad_example="raise" | "skip"` policy; `skip` records
  every skipped file, nothing is dropped silently.

Deliberate choices, documented here once:

* Images become (H, W, 3) uint8 RGB: grayscale (`L`, `P`) is replicated to 3
  channels, an alpha channel is dropped without compositing (what
  `Image.convert("RGB")` does, so the paper's loaders see the same pixels);
  a grey+alpha TIFF is read as grey, like a grey+alpha PNG.
* Masks are stored RAW, single channel, uint8, so that every protocol can
  apply its own threshold (CVC-ClinicDB's grey noise: `> 0` vs `> 127`):
  mode `1` (1-bit PNG) becomes {0, 255}; `L` and `P` keep their stored values
  (palette indices for `P`, which is what `np.array` of a `P` image gives);
  `RGB`/`RGBA`/multi-sample TIFF become the maximum over the colour channels
  (alpha dropped), so `raw > t` equals the paper's `(mask > t).max(-1)`;
  `LA` keeps its `L` channel. The PIL mode of the file is kept beside the
  mask (`mask_mode`), since the paper protocol's resize filter depends on it.
* More than 8 bits per sample (16-bit PNG/TIFF, float TIFF) is rejected with
  a `DatasetError`, never rescaled silently.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import pathlib
import re
import zipfile
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

PathLike = Union[str, os.PathLike]

TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp") + TIFF_SUFFIXES

ON_BAD_EXAMPLE = ("raise", "skip")

_LOG = logging.getLogger(__name__)


class DatasetError(ValueError):
  """Bad input data: the message and `path` name the offending file.

  Attributes:
    path: the file or folder at fault (absolute where known, else as given).
    example_id: id of the example concerned, or None.
  """

  def __init__(self, message: str, path: Optional[PathLike] = None,
               example_id: Optional[str] = None):
    super().__init__(message)
    self.path = None if path is None else os.fspath(path)
    self.example_id = example_id


# ----------------------------------------------------------------------------
# File references (on disk or inside a zip archive).
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FileRef:
  """A file of a dataset, on disk or inside a zip archive.

  Attributes:
    rel: the name recorded in the examples: path relative to the manual_dir,
      with `/` separators; for a zip member `<archive>.zip/<member>`.
    path: absolute path of the file, or of the zip archive.
    member: the member name inside the archive, or None for a plain file.
  """

  rel: str
  path: pathlib.Path
  member: Optional[str] = None

  @property
  def name(self) -> str:
    """Base name of the file (of the member for a zip member)."""
    return (self.member or self.path.name).rsplit("/", 1)[-1]

  @property
  def suffix(self) -> str:
    """Lower-case extension including the dot, e.g. `.png`."""
    return os.path.splitext(self.name)[1].lower()

  @property
  def display(self) -> str:
    """Absolute, human readable location used in error messages."""
    if self.member is None:
      return os.fspath(self.path)
    return f"{os.fspath(self.path)}/{self.member}"

  def read_bytes(self) -> bytes:
    """The raw bytes of the file."""
    if self.member is None:
      return self.path.read_bytes()
    with zipfile.ZipFile(self.path) as archive:
      return archive.read(self.member)


def file_ref(root: pathlib.Path, path: pathlib.Path) -> FileRef:
  """A `FileRef` for a plain file below `root` (the manual_dir)."""
  rel = path.relative_to(root).as_posix()
  return FileRef(rel=rel, path=path.resolve())


def zip_members(root: pathlib.Path, archive_path: pathlib.Path
                ) -> List[FileRef]:
  """Every regular member of a zip archive (macOS metadata excluded).

  Args:
    root: the manual_dir the archive lies in (for the relative names).
    archive_path: the zip file.

  Returns:
    One `FileRef` per file member, in archive order; folders, `__MACOSX/`
    entries and hidden files (`.DS_Store`, `._*`) are left out.

  Raises:
    DatasetError: when the archive cannot be read.
  """
  try:
    with zipfile.ZipFile(archive_path) as archive:
      infos = archive.infolist()
  except (OSError, zipfile.BadZipFile) as error:
    raise DatasetError(f"cannot read zip archive {archive_path}: {error}",
                       path=archive_path) from error
  rel_archive = archive_path.relative_to(root).as_posix()
  refs = []
  for info in infos:
    name = info.filename
    base = name.rstrip("/").rsplit("/", 1)[-1]
    if info.is_dir() or name.startswith("__MACOSX/") or base.startswith("."):
      continue
    refs.append(FileRef(rel=f"{rel_archive}/{name}",
                        path=archive_path.resolve(), member=name))
  return refs


def list_files(root: pathlib.Path, folder: pathlib.Path) -> List[FileRef]:
  """Plain files directly inside `folder` (hidden files left out), sorted.

  Args:
    root: the manual_dir (for the relative names).
    folder: a folder below `root`.
  """
  return [file_ref(root, p) for p in sorted(folder.iterdir())
          if p.is_file() and not p.name.startswith(".")]


def natural_key(text: str) -> Tuple[Any, ...]:
  """Sort key that orders the integers inside `text` numerically.

  `"benign (2).png"` sorts before `"benign (10).png"`.
  """
  return tuple(int(part) if part.isdigit() else part
               for part in re.split(r"(\d+)", text))


# ----------------------------------------------------------------------------
# Decoding.
# ----------------------------------------------------------------------------


def _open_pil(ref: FileRef) -> Image.Image:
  if ref.member is None:
    return Image.open(ref.path)
  return Image.open(io.BytesIO(ref.read_bytes()))


def _source(ref: FileRef):
  """A path, or the bytes of a zip member."""
  if ref.member is None:
    return os.fspath(ref.path)
  return io.BytesIO(ref.read_bytes())


def _read(ref: FileRef, policy) -> "processing.LoadedImage":  # noqa: F821
  """`processing.read_file(ref, policy)`; DatasetError naming the file."""
  from simsam_jax import processing  # pylint: disable=import-outside-toplevel
  what = policy.kind
  try:
    return processing.read_file(_source(ref), policy, name=ref.display)
  except processing.ReadError as error:
    if error.problem == "deep":
      message = str(error)
    elif error.problem == "shape":
      message = f"{what} {ref.display} has unsupported shape {error.shape}"
    else:
      message = (f"cannot read {what} file {ref.display}: "
                 f"{type(error.cause).__name__}: {error.cause}")
    raise DatasetError(message, path=ref.display) from error
  except Exception as error:  # pylint: disable=broad-exception-caught
    raise DatasetError(f"cannot read {what} file {ref.display}: "
                       f"{type(error).__name__}: {error}",
                       path=ref.display) from error


def read_size(ref: FileRef) -> Tuple[int, int]:
  """(height, width) of an image file from its header, without decoding.

  Raises:
    DatasetError: when the file is missing or not a readable image.
  """
  try:
    if ref.suffix in TIFF_SUFFIXES:
      from simsam_jax import processing  # pylint: disable=import-outside-toplevel
      return processing.tiff_size(_source(ref))
    with _open_pil(ref) as image:
      width, height = image.size
      return int(height), int(width)
  except Exception as error:  # pylint: disable=broad-exception-caught
    raise DatasetError(f"cannot read image file {ref.display}: "
                       f"{type(error).__name__}: {error}",
                       path=ref.display) from error


def read_image(ref: FileRef) -> np.ndarray:
  """Decodes an image file as RGB (`processing.read_file`, `DATASET_IMAGE`).

  Args:
    ref: the file (PNG/JPEG through Pillow, TIFF through tifffile).

  Returns:
    (H, W, 3) uint8 RGB, values 0-255.

  Raises:
    DatasetError: when the file cannot be decoded or is not 8-bit.
  """
  from simsam_jax import processing  # pylint: disable=import-outside-toplevel
  return _read(ref, processing.DATASET_IMAGE).pixels


def read_mask(ref: FileRef) -> Tuple[np.ndarray, str]:
  """Decodes a mask file RAW, as one uint8 channel
  (`processing.read_file`, `DATASET_MASK`).

  Args:
    ref: the mask file.

  Returns:
    raw: (H, W) uint8. Mode `1` gives {0, 255}; `L`/`P` the stored values;
      colour masks the maximum over the colour channels (alpha dropped).
    mode: the PIL mode of the file (`"1"`, `"L"`, `"P"`, `"RGB"`, ...); for a
      TIFF `"L"` (one sample) or `"RGB"` (several), as tifffile decodes it.

  Raises:
    DatasetError: when the file cannot be decoded or is not 8-bit.
  """
  from simsam_jax import processing  # pylint: disable=import-outside-toplevel
  loaded = _read(ref, processing.DATASET_MASK)
  return loaded.pixels, loaded.mode


def merge_masks(masks: Sequence[Tuple[np.ndarray, str]]
                ) -> Tuple[np.ndarray, str]:
  """Union of several raw masks of one image (element-wise maximum).

  Args:
    masks: (raw (H, W) uint8, mode) pairs, all of the same size.

  Returns:
    (merged raw (H, W) uint8, mode): the mode is the common mode when all
    masks share it, else `"L"` (so the paper protocol resizes the merged
    mask bicubically unless every part was 1-bit).
  """
  raws = [raw for raw, _ in masks]
  modes = {mode for _, mode in masks}
  merged = raws[0] if len(raws) == 1 else np.maximum.reduce(raws)
  return merged, (modes.pop() if len(modes) == 1 else "L")


# ----------------------------------------------------------------------------
# Bad-example policy.
# ----------------------------------------------------------------------------


def check_on_bad_example(value: str) -> str:
  """Validates an `on_bad_example` value ("raise" or "skip")."""
  if value not in ON_BAD_EXAMPLE:
    raise ValueError(f"on_bad_example must be one of {ON_BAD_EXAMPLE}, got "
                     f"{value!r}")
  return value


class BadExamples:
  """Applies `on_bad_example`: re-raise, or record and skip.

  Attributes:
    mode: "raise" or "skip".
    records: one dict per skipped file: `{"id", "path", "file", "reason"}`
      (`file` relative to the manual_dir where known).
  """

  def __init__(self, mode: str, records: Optional[List[Dict[str, Any]]] = None):
    self.mode = check_on_bad_example(mode)
    self.records = records if records is not None else []

  def handle(self, error: DatasetError, file: Optional[str] = None) -> None:
    """Raises `error` (mode "raise") or records it (mode "skip")."""
    if self.mode == "raise":
      raise error
    record = {"id": error.example_id, "path": error.path, "file": file,
              "reason": str(error)}
    _LOG.warning("skipping bad example: %s", error)
    self.records.append(record)


def ids_by_split(split_lists: Dict[str, Iterable[str]]) -> Dict[str, str]:
  """Inverts {split: ids} into {id: split}; an id in two splits is an error."""
  owner: Dict[str, str] = {}
  for split, ids in split_lists.items():
    for example_id in ids:
      if example_id in owner:
        raise ValueError(f"id {example_id} is listed in splits "
                         f"{owner[example_id]} and {split}")
      owner[example_id] = split
  return owner
