"""CVC-ClinicDB (CVC-612, Bernal et al. 2015) as a TFDS builder.

Layouts read from the manual_dir (either or both):

    Original/N.tif  +  Ground Truth/N.tif        the original release (TIFF;
                                                 `TIF/Original` etc. also read)
    PNG/Original/N.png + PNG/Ground Truth/N.png  the common Kaggle PNG repack
                                                 (3-channel masks)

Frames 1-612, ids `cvc_<N>`. When a frame exists in both formats, the TIFF
pair is used (the original files) and the PNG pair is listed in
`metadata["unused_files"]`; each example's `source_format` says which was
read. The TIFF frames are uncompressed 3-sample MinIsBlack files that Pillow
cannot open: they are read with tifffile (RGB order, equal to the PNG copy).

Masks are stored RAW: 138 of the 612 ground-truth masks hold grey noise
(values such as 11 and 5-112) besides 0 and 255, and the protocols differ on
it (the paper thresholds `> 0`, the native protocol `> 127`). PNG masks are
reduced to one channel by the maximum over channels (their channels are
identical in the repack).

Splits: the committed `splits/cvc_clinicdb.json` (80/10/10, seed 42, see
`splitting.py`). Listed frames absent from the manual_dir are left out and
named in `metadata["missing_ids"]`; a frame number outside 1-612 or a file
name that is not `N.tif`/`N.png` is bad input.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import tensorflow_datasets as tfds

from simsam_jax.data import protocols, registry
from simsam_jax.data import common
from simsam_jax.data import splitting
from simsam_jax.data.builder import (ManualBuilder, Record, common_features,
                                      source_format)
from simsam_jax.data.common import BadExamples, DatasetError, FileRef

NUM_FRAMES = 612
IMAGE_DIR = "Original"
MASK_DIR = "Ground Truth"
# (image folder, mask folder, format), in order of preference.
LAYOUTS = (
    (IMAGE_DIR, MASK_DIR, "tiff"),
    (f"TIF/{IMAGE_DIR}", f"TIF/{MASK_DIR}", "tiff"),
    (f"PNG/{IMAGE_DIR}", f"PNG/{MASK_DIR}", "png"),
)
_FRAME = re.compile(r"^(\d+)\.(tif|tiff|png)$", re.IGNORECASE)

_CITATION = """\
@article{bernal2015wm,
  title={WM-DOVA maps for accurate polyp highlighting in colonoscopy:
         Validation vs. saliency maps from physicians},
  author={Bernal, Jorge and S{\\'a}nchez, F Javier and
          Fern{\\'a}ndez-Esparrach, Gloria and Gil, Debora and
          Rodr{\\'\\i}guez, Cristina and Vilari{\\~n}o, Fernando},
  journal={Computerized Medical Imaging and Graphics}, volume={43},
  pages={99--111}, year={2015}, doi={10.1016/j.compmedimag.2015.02.007}
}"""


def frame_id(frame: int) -> str:
  """`cvc_12` for frame 12."""
  return f"cvc_{frame}"


def canonical_ids() -> List[str]:
  """cvc_1 ... cvc_612, by frame number."""
  return [frame_id(n) for n in range(1, NUM_FRAMES + 1)]


class CvcClinicdb(ManualBuilder):
  """CVC-ClinicDB colonoscopy polyp segmentation (manual download)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download CVC-ClinicDB from https://polyp.grand-challenge.org/CVCClinicDB/
(Bernal et al. 2015; research and educational use only) and unzip it so that
the manual_dir holds

  Original/1.tif ... Original/612.tif          (frames, TIFF)
  Ground Truth/1.tif ... Ground Truth/612.tif  (masks, TIFF)

or the PNG repack found on Kaggle:

  PNG/Original/1.png ...   PNG/Ground Truth/1.png ...

(`TIF/Original`, `TIF/Ground Truth` are read too). Keep the space in
`Ground Truth`. When both formats are present the TIFF files are used.
"""

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="Colonoscopy frames with polyp masks (CVC-ClinicDB).",
        features=common_features(
            frame=tfds.features.Scalar(dtype=np.int32)),
        homepage="https://polyp.grand-challenge.org/CVCClinicDB/",
        citation=_CITATION,
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,
    )

  def _scan(self, root: pathlib.Path, bad: BadExamples,
            metadata: Dict[str, Any]) -> List[Record]:
    layouts = []
    for image_dir, mask_dir, fmt in LAYOUTS:
      has_images, has_masks = (root / image_dir).is_dir(), (root / mask_dir
                                                             ).is_dir()
      if has_images != has_masks:
        missing = root / (mask_dir if has_images else image_dir)
        raise DatasetError(f"cvc_clinicdb: required folder {missing} is "
                           "missing from the manual_dir", path=missing)
      if has_images:
        layouts.append((image_dir, mask_dir, fmt))
    if not layouts:
      raise DatasetError(
          f"cvc_clinicdb: required folders '{IMAGE_DIR}' and '{MASK_DIR}' "
          f"(or 'PNG/{IMAGE_DIR}' and 'PNG/{MASK_DIR}') are missing from the "
          f"manual_dir {root}", path=root / IMAGE_DIR)
    # frame -> (image ref, mask ref or None), first layout wins.
    chosen: Dict[int, Tuple[FileRef, Optional[FileRef]]] = {}
    orphan_masks: Dict[int, FileRef] = {}
    for image_dir, mask_dir, _ in layouts:
      images = self._frames(root, root / image_dir, bad, metadata)
      masks = self._frames(root, root / mask_dir, bad, metadata)
      for frame, ref in images.items():
        if frame in chosen:
          metadata["unused_files"].append(ref.rel)
          if frame in masks:
            metadata["unused_files"].append(masks[frame].rel)
          continue
        chosen[frame] = (ref, masks.get(frame))
      for frame, ref in masks.items():
        if frame not in images:
          orphan_masks.setdefault(frame, ref)
    records = []
    for frame in sorted(set(chosen) | set(orphan_masks)):
      if frame not in chosen:
        ref = orphan_masks[frame]
        bad.handle(DatasetError(f"cvc_clinicdb: mask {ref.display} has no "
                                "image", path=ref.display,
                                example_id=frame_id(frame)), file=ref.rel)
        continue
      image, mask = chosen[frame]
      if frame < 1 or frame > NUM_FRAMES:
        bad.handle(DatasetError(
            f"cvc_clinicdb: {image.display} is outside the known frames "
            f"1-{NUM_FRAMES}; the committed splits do not cover it",
            path=image.display, example_id=frame_id(frame)), file=image.rel)
        continue
      if mask is None:
        bad.handle(DatasetError(
            f"cvc_clinicdb: image {image.display} has no mask (expected "
            f"{MASK_DIR}/{image.name} beside {IMAGE_DIR}/)",
            path=image.display, example_id=frame_id(frame)), file=image.rel)
        continue
      records.append(Record(id=frame_id(frame), image=image, masks=[mask],
                            source_format=source_format(image),
                            extra={"frame": np.int32(frame)}))
    counts: Dict[str, int] = {}
    for record in records:
      counts[record.source_format] = counts.get(record.source_format, 0) + 1
    metadata["source_format_counts"] = counts
    return records

  def _frames(self, root: pathlib.Path, folder: pathlib.Path,
              bad: BadExamples, metadata: Dict[str, Any]
              ) -> Dict[int, FileRef]:
    frames = {}
    for ref in common.list_files(root, folder):
      if ref.suffix not in common.IMAGE_SUFFIXES:
        metadata["ignored_files"].append(ref.rel)
        continue
      match = _FRAME.match(ref.name)
      if not match:
        bad.handle(DatasetError(
            f"cvc_clinicdb: unrecognised file name {ref.display} (expected "
            "'N.tif' or 'N.png')", path=ref.display), file=ref.rel)
        continue
      frames[int(match.group(1))] = ref
    return frames

  def _assign_splits(self, records: List[Record], bad: BadExamples,
                     metadata: Dict[str, Any]) -> Dict[str, List[Record]]:
    metadata["split_files"] = ["cvc_clinicdb.json"]
    split_lists = splitting.load_split_lists("cvc_clinicdb")
    return self._assign_from_lists(records, split_lists, bad, metadata)


registry.register(registry.DatasetSpec(
    name="cvc_clinicdb", builder=CvcClinicdb, aliases=("cvc", "cvc612", "cvc_clinic_db"),
    protocol_hook=protocols.cvc_rules))
