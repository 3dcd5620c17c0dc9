"""NIfTI and DICOM: one 2-D slice in (with its spacing), a mask volume out.

Reading and writing go through nibabel and pydicom (`pip install -e
".[medical]"`); nothing here parses either format by hand. The image reader
(`processing.read_image`) dispatches `.nii` / `.nii.gz` files to
`read_nifti_slice` and `.dcm` / `.dicom` files to `read_dicom`.

Slice convention (the one of ITK, SimpleITK and MedSAM's CT/MR scripts):
slice `k` along voxel axis `axis` of an array `data` with remaining voxel
axes a < b becomes the 2-D image `data[..., k, ...].T`, so image rows run
along voxel axis b and columns along voxel axis a. For the default
`axis=2`, pixel (x, y) is voxel (i=x, j=y, k); the pixel spacing is
`(zooms[b], zooms[a])` in (row, column) order, in the file's spatial units
(mm for scanner data). `write_nifti_mask` inverts exactly this mapping, so
a mask written for a slice lies on the same voxels in 3D Slicer / ITK-SNAP.

Deliberate choices:

* Voxel values are read through nibabel's array proxy, which applies the
  header's `scl_slope` / `scl_inter`; DICOM values through pydicom's
  modality LUT (RescaleSlope / RescaleIntercept): window policies are in
  these units (e.g. Hounsfield).
* MONOCHROME1 DICOM images are read as stored (not inverted); multi-frame
  DICOM and 4-D NIfTI (other than a trailing axis of length 1) are refused.
* The mask volume keeps the input's shape, affine, qform/sform codes and
  spatial units; its data type is uint8 (0/1) with unit scaling.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from typing import Any, Optional, Tuple

import numpy as np

NIFTI = "nifti"
DICOM = "dicom"
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom")
_EXTRA = 'pip install -e ".[medical]"'


class MedicalFormatError(ValueError):
  """A NIfTI / DICOM file that cannot be used; the caller adds the path."""


def medical_kind(path: str) -> Optional[str]:
  """NIFTI, DICOM or None, from the file name."""
  name = os.fspath(path).lower()
  if name.endswith(NIFTI_SUFFIXES):
    return NIFTI
  if name.endswith(DICOM_SUFFIXES):
    return DICOM
  return None


def _nibabel():
  try:
    import nibabel  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise MedicalFormatError(f"reading NIfTI needs nibabel: {_EXTRA}") from error
  return nibabel


def _pydicom():
  try:
    import pydicom  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise MedicalFormatError(f"reading DICOM needs pydicom: {_EXTRA}") from error
  return pydicom


@dataclasses.dataclass(frozen=True, eq=False)
class VolumeSlice:
  """One slice of a NIfTI volume and what is needed to write a mask back.

  Attributes:
    pixels: (H, W) slice values (the header's scaling applied), or None
      once handed over (`without_pixels`).
    spacing: (row, column) pixel spacing in the file's spatial units.
    path: the source file.
    shape: the volume's 3-D voxel shape.
    axis: the voxel axis the slice runs along (0, 1 or 2).
    index: the slice index along `axis`.
    affine: (4, 4) float64 voxel-to-world affine.
    header: the nibabel header (orientation codes and units are copied).
  """
  pixels: Optional[np.ndarray]
  spacing: Tuple[float, float]
  path: str
  shape: Tuple[int, int, int]
  axis: int
  index: int
  affine: np.ndarray
  header: Any

  def without_pixels(self) -> "VolumeSlice":
    return dataclasses.replace(self, pixels=None)

  def describe(self) -> dict:
    """JSON-ready: shape, axis, slice index, spacing and affine."""
    return {"shape": list(self.shape), "axis": self.axis, "slice": self.index,
            "spacing": list(self.spacing),
            "affine": np.asarray(self.affine, np.float64).tolist()}


def _volume_shape(image, path: str) -> Tuple[int, int, int]:
  shape = tuple(int(n) for n in image.shape)
  while len(shape) > 3 and shape[-1] == 1:
    shape = shape[:-1]
  if len(shape) == 2:
    shape = shape + (1,)
  if len(shape) != 3:
    raise MedicalFormatError(f"expected a 2-D or 3-D volume, got voxel shape "
                             f"{tuple(image.shape)}")
  return shape


def slice_image(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
  """(X, Y, Z) volume -> the (H, W) image of slice `index` along `axis`."""
  return np.take(volume, index, axis=axis).T


@dataclasses.dataclass(frozen=True, eq=False)
class Volume:
  """A whole NIfTI volume.

  Attributes:
    data: (X, Y, Z) voxel values, the header's scaling applied (float64, or
      the stored integer dtype when the header does not scale).
    affine: (4, 4) float64 voxel-to-world affine.
    header: the nibabel header.
    zooms: (3,) voxel sizes along the voxel axes, in the file's units.
    path: the file.
  """
  data: np.ndarray
  affine: np.ndarray
  header: Any
  zooms: Tuple[float, float, float]
  path: str

  @property
  def shape(self) -> Tuple[int, int, int]:
    return tuple(int(n) for n in self.data.shape)

  def spacing(self, axis: int) -> Tuple[float, float]:
    """(row, column) spacing of the slices along `axis` (`slice_image`)."""
    a, b = [d for d in range(3) if d != axis]
    return self.zooms[b], self.zooms[a]

  def slice(self, index: int, axis: int = 2) -> VolumeSlice:
    """Slice `index` along `axis`, with what is needed to write it back."""
    return VolumeSlice(
        pixels=np.ascontiguousarray(slice_image(self.data, axis, index)),
        spacing=self.spacing(axis), path=self.path, shape=self.shape,
        axis=axis, index=int(index), affine=self.affine, header=self.header)


def read_nifti(path: str) -> Volume:
  """Reads a 2-D or 3-D NIfTI volume (a 2-D image has Z = 1).

  The whole volume is decoded, so that a truncated or corrupt file fails
  here instead of giving a partial volume.

  Raises:
    MedicalFormatError: for a missing extra or a volume that is not 2-D /
      3-D; nibabel's own errors for unreadable files.
  """
  nibabel = _nibabel()
  image = nibabel.load(path)
  if getattr(image, "affine", None) is None:
    raise MedicalFormatError("the file holds no voxel-to-world affine")
  shape = _volume_shape(image, path)
  data = np.asarray(image.dataobj).reshape(shape)
  if data.size == 0:
    raise MedicalFormatError("the volume holds no voxels")
  zooms = [float(z) for z in image.header.get_zooms()[:3]]
  zooms += [1.0] * (3 - len(zooms))
  return Volume(data=data, affine=np.asarray(image.affine, np.float64),
                header=image.header, zooms=tuple(zooms), path=os.fspath(path))


def read_nifti_slice(path: str, slice_index: Optional[int],
                     axis: int = 2) -> VolumeSlice:
  """Reads one slice of a NIfTI file.

  Args:
    path: `.nii` or `.nii.gz`.
    slice_index: index along `axis`; may be None only for a single-slice
      volume (then 0).
    axis: voxel axis 0, 1 or 2.

  Returns:
    A `VolumeSlice` whose pixels are (H, W) (`Volume.data`'s dtype).

  Raises:
    MedicalFormatError: for a missing extra, a bad axis or index, or a
      volume that is not 2-D / 3-D.
  """
  if axis not in (0, 1, 2):
    raise MedicalFormatError(f"--axis={axis}: must be 0, 1 or 2")
  volume = read_nifti(path)
  shape = volume.shape
  if slice_index is None:
    if shape[axis] != 1:
      raise MedicalFormatError(
          f"a volume of shape {shape}: choose a slice with --slice=K "
          f"(0 <= K < {shape[axis]} along --axis={axis})")
    slice_index = 0
  if not 0 <= int(slice_index) < shape[axis]:
    raise MedicalFormatError(
        f"--slice={slice_index} is outside the volume (shape {shape}: "
        f"0 <= K < {shape[axis]} along --axis={axis})")
  return volume.slice(int(slice_index), axis)


def nifti_mask_bytes(volume: VolumeSlice, mask: np.ndarray,
                     compressed: bool) -> bytes:
  """Encodes a mask volume of the input's shape with the slice filled.

  Args:
    volume: the slice the mask was predicted on (`read_nifti_slice`).
    mask: (H, W) bool, H and W the slice image's size.
    compressed: gzip the file (`.nii.gz`).

  Returns:
    The file's bytes: uint8 0/1 voxels, the input's affine and orientation.
  """
  nibabel = _nibabel()
  expected = slice_image(np.zeros(volume.shape, np.bool_), volume.axis,
                         volume.index).shape
  if mask.shape != expected:
    raise ValueError(f"mask of shape {mask.shape} does not fit slice "
                     f"{volume.index} (image shape {expected})")
  data = np.zeros(volume.shape, np.uint8)
  slicer = [slice(None)] * 3
  slicer[volume.axis] = volume.index
  data[tuple(slicer)] = np.asarray(mask, np.uint8).T
  header = volume.header.copy()
  header.set_data_dtype(np.uint8)
  image = nibabel.Nifti1Image(data, volume.affine, header)
  image.header.set_slope_inter(1.0, 0.0)
  raw = image.to_bytes()
  return gzip.compress(raw, mtime=0) if compressed else raw


def read_dicom(path: str) -> Tuple[np.ndarray, Optional[Tuple[float, float]]]:
  """Reads a single-frame DICOM image.

  Returns:
    pixels: (H, W) (or (H, W, 3) for colour) in modality units
      (RescaleSlope / RescaleIntercept applied).
    spacing: (row, column) PixelSpacing (or ImagerPixelSpacing) in mm, or
      None when the file gives neither.

  Raises:
    MedicalFormatError: for a missing extra, a multi-frame file or no
      pixel data.
  """
  pydicom = _pydicom()
  from pydicom.pixels import apply_modality_lut  # pylint: disable=import-outside-toplevel
  dataset = pydicom.dcmread(path)
  if "PixelData" not in dataset:
    raise MedicalFormatError("the DICOM file holds no pixel data")
  frames = int(dataset.get("NumberOfFrames", 1) or 1)
  if frames > 1:
    raise MedicalFormatError(f"multi-frame DICOM ({frames} frames) is not "
                             "supported; export one frame per file")
  pixels = dataset.pixel_array
  if pixels.ndim == 2:
    pixels = apply_modality_lut(pixels, dataset)
  spacing = dataset.get("PixelSpacing") or dataset.get("ImagerPixelSpacing")
  if spacing is not None:
    spacing = (float(spacing[0]), float(spacing[1]))
  return np.asarray(pixels), spacing
