"""ISIC 2016 Part 1 (lesion segmentation, Gutman et al. 2016) as a TFDS builder.

Layout read from the manual_dir, each part as a folder OR as the zip file of
the release (read in place with `zipfile`; a folder wins over a zip):

    ISBI2016_ISIC_Part1_Training_Data[.zip]        ISIC_XXXXXXX.jpg (900)
    ISBI2016_ISIC_Part1_Training_GroundTruth[.zip] ISIC_XXXXXXX_Segmentation.png
    ISBI2016_ISIC_Part1_Test_Data[.zip]             (379, optional)
    ISBI2016_ISIC_Part1_Test_GroundTruth[.zip]      (optional)

Inside a zip the files may sit in the part's folder or at the top level;
`__MACOSX/` and hidden entries are ignored. Masks are matched by id with the
suffix `_segmentation.png` compared case-insensitively (2016 writes
`_Segmentation`, 2017/2018 `_segmentation`). Ids are `ISIC_XXXXXXX`; the
recorded file names of zip members are `<archive>.zip/<member>`.

Splits:

* `test`: the official Test set. The Test parts are optional: without them
  the built dataset has NO `test` split (TFDS cannot write an empty split;
  `metadata["absent_splits"]` lists it). A Test data part without its
  ground-truth part (or the reverse) is an error.
* `validation`: 10 % (`ceil(n / 10)`) of the official Training ids present,
  drawn at build time by `splitting.validation_subset` (sorted ids, then
  `np.random.RandomState(42).permutation`); `train`: the rest. The official
  Training ids are not known offline, so this list is not committed: it is
  fixed for the complete release (900 ids -> 90), but it differs on a partial
  copy. `metadata["validation_ids"]` records it. Rule and seed come from
  `splits/isic2016.json`.

Non-image files (licences, metadata CSVs) are ignored and listed in
`metadata["ignored_files"]`.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any, Dict, List, Optional, Tuple

import tensorflow_datasets as tfds

from simsam_jax.data import registry
from simsam_jax.data import common
from simsam_jax.data import splitting
from simsam_jax.data.builder import (ManualBuilder, Record, common_features,
                                      source_format)
from simsam_jax.data.common import BadExamples, DatasetError, FileRef

PREFIX = "ISBI2016_ISIC_Part1"
OFFICIAL_SPLITS = ("Training", "Test")
_IMAGE = re.compile(r"^(ISIC_\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)
_MASK = re.compile(r"^(ISIC_\d+)_segmentation\.png$", re.IGNORECASE)

_CITATION = """\
@article{gutman2016skin,
  title={Skin Lesion Analysis toward Melanoma Detection: A Challenge at the
         International Symposium on Biomedical Imaging (ISBI) 2016, hosted by
         the International Skin Imaging Collaboration (ISIC)},
  author={Gutman, David and Codella, Noel C. F. and Celebi, Emre and
          Helba, Brian and Marchetti, Michael and Mishra, Nabin and
          Halpern, Allan},
  journal={arXiv preprint arXiv:1605.01397}, year={2016}
}"""


def part_name(official_split: str, kind: str) -> str:
  """`ISBI2016_ISIC_Part1_Training_Data` for ("Training", "Data")."""
  return f"{PREFIX}_{official_split}_{kind}"


def _normalise_id(raw: str) -> str:
  return "ISIC_" + raw.split("_", 1)[1]


class Isic2016(ManualBuilder):
  """ISIC 2016 Part 1 dermoscopic lesion segmentation (manual download)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download ISIC 2016 Part 1 (Lesion Segmentation) from the ISIC challenge site
(https://challenge.isic-archive.com/data/#2016; CC BY-NC) and put into the
manual_dir the four parts, unzipped or as the zip files themselves:

  ISBI2016_ISIC_Part1_Training_Data/ISIC_0000000.jpg ...      (or .zip)
  ISBI2016_ISIC_Part1_Training_GroundTruth/ISIC_0000000_Segmentation.png ...
  ISBI2016_ISIC_Part1_Test_Data/ ...                          (optional)
  ISBI2016_ISIC_Part1_Test_GroundTruth/ ...                   (optional)

Without the Test parts the dataset has train and validation splits only.
"""

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="Dermoscopic images with lesion masks (ISIC 2016 Part 1).",
        features=common_features(
            official_split=tfds.features.Text(
                doc="official ISIC 2016 part: Training or Test")),
        homepage="https://challenge.isic-archive.com/landing/2016/",
        citation=_CITATION,
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,
    )

  def _part(self, root: pathlib.Path, name: str
            ) -> Optional[Tuple[str, List[FileRef]]]:
    """(where, files) of a release part, a folder or a zip; None if absent."""
    folder = root / name
    if folder.is_dir():
      refs = []
      for path in sorted(folder.rglob("*")):
        if path.is_file() and not any(
            part.startswith(".") or part == "__MACOSX"
            for part in path.relative_to(folder).parts):
          refs.append(common.file_ref(root, path))
      return common.file_ref(root, folder).rel, refs
    archive = root / f"{name}.zip"
    if archive.is_file():
      return archive.name, common.zip_members(root, archive)
    return None

  def _scan(self, root: pathlib.Path, bad: BadExamples,
            metadata: Dict[str, Any]) -> List[Record]:
    records = []
    seen: Dict[str, str] = {}
    metadata["parts"] = {}
    for official in OFFICIAL_SPLITS:
      data = self._part(root, part_name(official, "Data"))
      truth = self._part(root, part_name(official, "GroundTruth"))
      if official == "Training" or (data is None) != (truth is None):
        for part, name in ((data, "Data"), (truth, "GroundTruth")):
          if part is None:
            missing = root / part_name(official, name)
            raise DatasetError(
                f"isic2016: required folder {missing} (or {missing}.zip) is "
                f"missing from the manual_dir", path=missing)
      if data is None:
        continue
      metadata["parts"][official] = [data[0], truth[0]]
      images = self._match(data[1], _IMAGE, bad, metadata)
      masks = self._match(truth[1], _MASK, bad, metadata)
      for example_id in sorted(set(images) | set(masks)):
        image, mask = images.get(example_id), masks.get(example_id)
        if image is None:
          bad.handle(DatasetError(f"isic2016: mask {mask.display} has no "
                                  "image", path=mask.display,
                                  example_id=example_id), file=mask.rel)
          continue
        if mask is None:
          bad.handle(DatasetError(
              f"isic2016: image {image.display} has no mask (expected "
              f"{example_id}_Segmentation.png in "
              f"{part_name(official, 'GroundTruth')})", path=image.display,
              example_id=example_id), file=image.rel)
          continue
        if example_id in seen:
          bad.handle(DatasetError(
              f"isic2016: {image.display} is in both {seen[example_id]} and "
              f"{official}", path=image.display, example_id=example_id),
              file=image.rel)
          continue
        seen[example_id] = official
        records.append(Record(id=example_id, image=image, masks=[mask],
                              source_format=source_format(image),
                              extra={"official_split": official}))
    return records

  def _match(self, refs: List[FileRef], pattern: re.Pattern,
             bad: BadExamples, metadata: Dict[str, Any]) -> Dict[str, FileRef]:
    found: Dict[str, FileRef] = {}
    for ref in refs:
      if ref.suffix not in common.IMAGE_SUFFIXES:
        metadata["ignored_files"].append(ref.rel)
        continue
      match = pattern.match(ref.name)
      if not match:
        bad.handle(DatasetError(
            f"isic2016: unrecognised file name {ref.display} (expected "
            f"{pattern.pattern})", path=ref.display), file=ref.rel)
        continue
      example_id = _normalise_id(match.group(1))
      if example_id in found:
        bad.handle(DatasetError(
            f"isic2016: {ref.display} duplicates {found[example_id].display}",
            path=ref.display, example_id=example_id), file=ref.rel)
        continue
      found[example_id] = ref
    return found

  def _assign_splits(self, records: List[Record], bad: BadExamples,
                     metadata: Dict[str, Any]) -> Dict[str, List[Record]]:
    rule = splitting.load_split_file("isic2016")
    metadata["split_files"] = ["isic2016.json"]
    training = [r for r in records if r.extra["official_split"] == "Training"]
    train_ids, validation_ids = splitting.validation_subset(
        [r.id for r in training], seed=int(rule["seed"]),
        fraction_denominator=int(rule["validation_fraction_denominator"]))
    validation_set = set(validation_ids)
    metadata["validation_ids"] = validation_ids
    splits: Dict[str, List[Record]] = {"train": [], "validation": [],
                                       "test": []}
    for record in sorted(records, key=lambda r: r.id):
      if record.extra["official_split"] == "Test":
        record.split = "test"
      else:
        record.split = ("validation" if record.id in validation_set
                        else "train")
      splits[record.split].append(record)
    return splits


registry.register(registry.DatasetSpec(
    name="isic2016", builder=Isic2016, aliases=("isic", "isic_2016")))
