"""A folder of NIfTI image / label volumes as a TFDS builder ("nifti_folder").

Layout read from the manual_dir (the Medical Segmentation Decathlon and
nnU-Net conventions):

    imagesTr/NAME.nii.gz  (or NAME_0000.nii.gz)  +  labelsTr/NAME.nii.gz

(`images/` + `labels/` are read too; `.nii` works like `.nii.gz`). A label
volume must have its image's voxel shape; foreground is label > 0 (every
class). Volumes are read with nibabel (`simsam_jax.medical`, the `medical`
extra) and sliced along voxel axis 2 with the convention of
`medical.slice_image` (rows along voxel axis 1, columns along axis 0).

Builder configs choose the slices:

* `labelled` (default): every slice with at least one foreground voxel.
* `largest`: per volume, the slice with the largest foreground area (the
  lowest index on ties).

Each slice becomes one example, id `NAME_zKKKK`: the image through the
default intensity policy (`processing.apply_intensity`: min-max over the
slice, as `segment --image=scan.nii.gz --slice=K` does), the mask as 0/255,
and `spacing`, the (row, column) pixel spacing in the file's units (mm),
which the evaluation passes to NSD (`--config.nsd_tolerance_mm`).

Splits are deterministic and by volume (no volume has slices in two
splits): `splitting.split_80_10_10` of the sorted volume names, seed 42.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import numpy as np
import tensorflow_datasets as tfds

from simsam_jax import medical, processing
from simsam_jax.data import registry
from simsam_jax.data import common, splitting
from simsam_jax.data.builder import ManualBuilder, Record, common_features
from simsam_jax.data.common import BadExamples, DatasetError

LAYOUTS = (("imagesTr", "labelsTr"), ("images", "labels"))
SLICE_AXIS = 2
_VOLUME = re.compile(r"^(.+?)(_0000)?\.nii(\.gz)?$", re.IGNORECASE)


@dataclasses.dataclass
class NiftiFolderConfig(tfds.core.BuilderConfig):
  """Which slices of each volume become examples ("labelled", "largest")."""
  slices: str = "labelled"


def volume_name(file_name: str) -> str:
  """`case_01` for `case_01.nii.gz`, `case_01_0000.nii.gz` or `case_01.nii`."""
  match = _VOLUME.match(file_name)
  return match.group(1) if match else ""


def chosen_slices(label: np.ndarray, slices: str) -> List[int]:
  """Indices along axis 2 of the slices that become examples.

  Args:
    label: (X, Y, Z) bool foreground.
    slices: "labelled" or "largest".
  """
  area = label.reshape(-1, label.shape[2]).sum(axis=0)
  if slices == "largest":
    return [int(np.argmax(area))] if area.max() > 0 else []
  return [int(k) for k in np.flatnonzero(area)]


class NiftiFolder(ManualBuilder):
  """Any folder of NIfTI image/label pairs, one example per chosen slice."""

  BUILDER_CONFIGS = [
      NiftiFolderConfig(name="labelled", slices="labelled",
                        description="every slice with foreground"),
      NiftiFolderConfig(name="largest", slices="largest",
                        description="the largest-area slice per volume"),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "labelled"

  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put the volumes in the manual_dir as

  imagesTr/NAME.nii.gz (or NAME_0000.nii.gz)   labelsTr/NAME.nii.gz

(or images/ + labels/), one label volume of the same voxel shape per image;
foreground is label > 0. Needs pip install -e ".[medical]".
"""

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="NIfTI image/label volumes, one example per slice.",
        features=common_features(
            volume=tfds.features.Text(doc="volume name"),
            slice=tfds.features.Scalar(dtype=np.int32, doc="index along axis 2"),
            spacing=tfds.features.Tensor(shape=(2,), dtype=np.float32,
                                         doc="(row, column) spacing, mm"),
            intensity=tfds.features.Text(doc="intensity policy applied")),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,
    )

  def _scan(self, root: pathlib.Path, bad: BadExamples,
            metadata: Dict[str, Any]) -> List[Record]:
    layout = next(((i, l) for i, l in LAYOUTS
                   if (root / i).is_dir() and (root / l).is_dir()), None)
    if layout is None:
      raise DatasetError(
          f"nifti_folder: the manual_dir {root} needs the folders imagesTr/ and "
          "labelsTr/ (or images/ and labels/)", path=root / LAYOUTS[0][0])
    images = self._volumes(root, root / layout[0], bad, metadata)
    labels = self._volumes(root, root / layout[1], bad, metadata)
    records = []
    for name in sorted(set(images) | set(labels), key=common.natural_key):
      if name not in labels or name not in images:
        ref = images.get(name) or labels[name]
        what = "has no label volume" if name in images else "has no image volume"
        bad.handle(DatasetError(f"nifti_folder: {ref.display} {what}", path=ref.display,
                                example_id=name), file=ref.rel)
        continue
      records.append(Record(id=name, image=images[name], masks=[labels[name]],
                            source_format="nifti"))
    metadata["axis"] = SLICE_AXIS
    metadata["slices"] = self.builder_config.slices
    return records

  def _volumes(self, root, folder, bad, metadata) -> Dict[str, common.FileRef]:
    found = {}
    for ref in common.list_files(root, folder):
      name = volume_name(ref.name)
      if not name:
        metadata["ignored_files"].append(ref.rel)
        continue
      if name in found:
        bad.handle(DatasetError(f"nifti_folder: {ref.display} and "
                                f"{found[name].display} are the same volume",
                                path=ref.display, example_id=name), file=ref.rel)
        continue
      found[name] = ref
    return found

  def _assign_splits(self, records: List[Record], bad: BadExamples,
                     metadata: Dict[str, Any]) -> Dict[str, List[Record]]:
    names = sorted((r.id for r in records), key=common.natural_key)
    lists = splitting.split_80_10_10(names)
    metadata["volumes"] = lists
    return self._assign_from_lists(records, lists, bad, metadata)

  def _check_sizes(self, record: Record, bad: BadExamples) -> bool:
    return True  # Shapes are compared when the volumes are read (_slices).

  def _slices(self, record: Record) -> Iterator[Tuple[str, Dict[str, Any]]]:
    image_ref, label_ref = record.image, record.masks[0]
    try:
      image = medical.read_nifti(image_ref.display)
      label = medical.read_nifti(label_ref.display)
    except Exception as error:  # pylint: disable=broad-exception-caught
      raise DatasetError(f"nifti_folder: cannot read {image_ref.display} or "
                         f"{label_ref.display}: {error}", path=image_ref.display,
                         example_id=record.id) from error
    if label.shape != image.shape:
      raise DatasetError(
          f"nifti_folder: label {label_ref.display} has voxel shape {label.shape} but "
          f"its image {image_ref.rel} has {image.shape}", path=label_ref.display,
          example_id=record.id)
    volume, foreground = image.data, label.data > 0
    for k in chosen_slices(foreground, self.builder_config.slices):
      example_id = f"{record.id}_z{k:04d}"
      try:
        pixels, policy = processing.apply_intensity(
            medical.slice_image(volume, SLICE_AXIS, k), None,
            f"{image_ref.display} slice {k}")
      except ValueError as error:
        raise DatasetError(str(error), path=image_ref.display,
                           example_id=example_id) from error
      mask = medical.slice_image(foreground, SLICE_AXIS, k).astype(np.uint8) * 255
      yield example_id, {
          "id": example_id,
          "image": np.ascontiguousarray(np.repeat(pixels[..., None], 3, -1)),
          "mask": np.ascontiguousarray(mask), "mask_mode": "L",
          "height": np.int32(mask.shape[0]), "width": np.int32(mask.shape[1]),
          "image_file": image_ref.rel, "mask_files": [label_ref.rel],
          "source_format": "nifti", "volume": record.id, "slice": np.int32(k),
          "spacing": np.asarray(image.spacing(SLICE_AXIS), np.float32),
          "intensity": policy,
      }

  def _generate(self, records: Sequence[Record], bad: BadExamples):
    for record in records:
      try:
        examples = list(self._slices(record))
      except DatasetError as error:
        error.example_id = error.example_id or record.id
        bad.handle(error, file=record.image.rel)
        continue
      yield from examples


# "labelled" (every slice with foreground) or "largest" (the largest-area
# slice per volume).
registry.register(registry.DatasetSpec(
    name="nifti_folder", builder=NiftiFolder, default_config="labelled"))
