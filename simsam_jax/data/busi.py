"""BUSI (Breast Ultrasound Images, Al-Dhabyani et al. 2020) as a TFDS builder.

Layout read (the Kaggle release), from the manual_dir or its
`Dataset_BUSI_with_GT/` subfolder:

    Dataset_BUSI_with_GT/{benign,malignant,normal}/
        benign (N).png            the image (RGB PNG, channels identical)
        benign (N)_mask.png       its ground truth (1-bit PNG; RGB for normal)
        benign (N)_mask_1.png     extra lesions, `_mask_2`, ... (optional)

Known composition: benign 1-437, malignant 1-210, normal 1-133 (780 images).
Ids are `<class>_<N>` (`benign_15`).

Configs:

* `paper437` (default): the selection the published code ends up with. It
  keys files by the FIRST INTEGER of the file name across the `benign` then
  `malignant` folders, so `malignant (N)` overwrites `benign (N)`: malignant
  1-210 plus benign 211-437 = 437 images; `normal` is excluded. One mask per
  image: the main `_mask.png` (`mask_policy="main"`). See `select_paper437`.
* `paper437_last_mask`: the same 437 images, but a case with extra lesions
  uses its highest-numbered `_mask_K.png` (`mask_policy="last_sorted"`): what
  the published loader does when the directory listing comes sorted (the
  later file overwrites the earlier one). With an unsorted `os.listdir`, the
  published code may do either; both variants are deterministic here.
* `full`: all 647 benign + malignant cases, every `_mask*.png` of a case
  merged by union (`mask_policy="union"`).
* `full_with_normal`: `full` plus the 133 normal cases (empty masks).

Splits come from the committed lists `splits/busi_paper437.json`
(`paper437*`), `splits/busi_full.json` (`full`) and `busi_full.json` +
`busi_normal.json` (`full_with_normal`: the lesion cases keep exactly their
`full` split). A listed id absent from the manual_dir is left out and named
in `metadata["missing_ids"]`; a present case that the config leaves out
(normal in `full`, benign 1-210 in `paper437`) is named in
`metadata["excluded_ids"]`. A file name outside the known composition
(`benign (438).png`) or not of the form above is bad input.

Deliberate deviations: none in the data (images and masks as stored); the
paper's resize to 256x256 is a protocol (`protocols.py`), not a build step.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np
import tensorflow_datasets as tfds

from simsam_jax.data import registry
from simsam_jax.data import common
from simsam_jax.data import splitting
from simsam_jax.data.builder import (ManualBuilder, Record, common_features,
                                      source_format)
from simsam_jax.data.common import BadExamples, DatasetError, FileRef

CLASSES = ("benign", "malignant", "normal")
# Number of cases per class in the released dataset (Al-Dhabyani et al.).
COUNTS = {"benign": 437, "malignant": 210, "normal": 133}
FOLDER = "Dataset_BUSI_with_GT"
MASK_POLICIES = ("main", "last_sorted", "union")

_NAME = re.compile(
    r"^(?P<cls>benign|malignant|normal) \((?P<num>\d+)\)"
    r"(?P<mask>_mask(?:_(?P<extra>\d+))?)?\.png$", re.IGNORECASE)
_FIRST_INT = re.compile(r"\d+")

_CITATION = """\
@article{al2020dataset,
  title={Dataset of breast ultrasound images},
  author={Al-Dhabyani, Walid and Gomaa, Mohammed and Khaled, Hussien and
          Fahmy, Aly},
  journal={Data in Brief}, volume={28}, pages={104863}, year={2020},
  doi={10.1016/j.dib.2019.104863}
}"""


def case_id(cls: str, number: int) -> str:
  """`benign_15` for ("benign", 15)."""
  return f"{cls}_{number}"


def canonical_ids(classes: Iterable[str] = CLASSES) -> List[str]:
  """All ids of the known composition, class by class, then by number."""
  return [case_id(cls, n) for cls in classes for n in range(1, COUNTS[cls] + 1)]


def all_file_names(classes: Iterable[str] = CLASSES) -> List[str]:
  """Image and main-mask names of the full release, relative to the folder.

  `benign/benign (1).png`, `benign/benign (1)_mask.png`, ... (780 images and
  780 masks for the three classes). Which cases have extra `_mask_K` files
  is not part of this list.
  """
  names = []
  for cls in classes:
    for n in range(1, COUNTS[cls] + 1):
      names.append(f"{cls}/{cls} ({n}).png")
      names.append(f"{cls}/{cls} ({n})_mask.png")
  return names


@dataclasses.dataclass
class Case:
  """The files of one BUSI case (names relative to the BUSI folder)."""

  cls: str
  number: int
  image: Optional[str] = None
  main_mask: Optional[str] = None
  extra_masks: Dict[int, str] = dataclasses.field(default_factory=dict)

  @property
  def id(self) -> str:
    return case_id(self.cls, self.number)

  def all_masks(self) -> List[str]:
    """Main mask first, then the extra masks by number."""
    masks = [self.main_mask] if self.main_mask else []
    return masks + [self.extra_masks[k] for k in sorted(self.extra_masks)]


def parse_file_names(names: Iterable[str]
                     ) -> Tuple[Dict[Tuple[str, int], Case], List[str]]:
  """Groups BUSI file names into cases.

  Args:
    names: paths relative to the BUSI folder, `<class>/<file>`.

  Returns:
    cases: {(class, number): Case}.
    unrecognised: names that are not `<class> (N)[_mask[_K]].png` inside the
      folder of the same class.
  """
  cases: Dict[Tuple[str, int], Case] = {}
  unrecognised = []
  for name in names:
    folder, _, base = name.rpartition("/")
    match = _NAME.match(base)
    if not match or match["cls"].lower() != folder.lower():
      unrecognised.append(name)
      continue
    cls, number = match["cls"].lower(), int(match["num"])
    case = cases.setdefault((cls, number), Case(cls, number))
    if not match["mask"]:
      case.image = name
    elif match["extra"] is None:
      case.main_mask = name
    else:
      case.extra_masks[int(match["extra"])] = name
  return cases, unrecognised


def masks_by_policy(case: Case, policy: str) -> List[str]:
  """The mask files of a case that a mask policy uses.

  Args:
    case: the case (must have a main or an extra mask).
    policy: "main" (the `_mask.png` only), "last_sorted" (the last mask of
      the natural sort: the highest `_mask_K`, else the main mask) or
      "union" (all masks).
  """
  if policy not in MASK_POLICIES:
    raise ValueError(f"mask_policy must be one of {MASK_POLICIES}, got "
                     f"{policy!r}")
  masks = case.all_masks()
  if policy == "union":
    return masks
  if policy == "last_sorted":
    return masks[-1:]
  return [case.main_mask] if case.main_mask else []


def select_paper437(names: Iterable[str], mask_policy: str = "main"
                    ) -> Dict[str, Tuple[str, Tuple[str, ...]]]:
  """The selection of the published BUSI loader, as a pure function.

  The published loader walks the `benign` then the `malignant` folder and
  stores each file under the first integer of its file name, images and
  masks in two dicts, so a later file with the same number overwrites an
  earlier one: `malignant (N)` replaces `benign (N)`, and `normal` is never
  read. Here each folder is walked in natural order (`(2)` before `(10)`,
  `_mask.png` before `_mask_1.png` before `_mask_2.png`), which makes the
  emulation deterministic.

  Args:
    names: file names relative to the BUSI folder (`benign/benign (1).png`,
      `benign/benign (1)_mask.png`, ...), any order; names outside `benign/`
      and `malignant/` are ignored.
    mask_policy: which masks take part: "main" (only `_mask.png` files;
      default), "last_sorted" (every mask file, so the last one in natural
      order wins) or "union" (all masks of the selected case).

  Returns:
    {id: (image name, mask names)} ordered by the integer key. On the full
    release: malignant_1..malignant_210 then benign_211..benign_437.

  Raises:
    DatasetError: when the image and mask stored under one key come from
      different cases (the published loader would pair them wrongly).
  """
  if mask_policy not in MASK_POLICIES:
    raise ValueError(f"mask_policy must be one of {MASK_POLICIES}, got "
                     f"{mask_policy!r}")
  names = list(names)
  cases, _ = parse_file_names(names)
  images: Dict[int, str] = {}
  masks: Dict[int, str] = {}
  for cls in ("benign", "malignant"):
    in_folder = sorted((n for n in names if n.rpartition("/")[0] == cls),
                       key=common.natural_key)
    for name in in_folder:
      base = name.rpartition("/")[2]
      match = _NAME.match(base)
      if not match:
        continue
      key = int(_FIRST_INT.search(base).group())
      if not match["mask"]:
        images[key] = name
      elif mask_policy != "main" or match["extra"] is None:
        masks[key] = name
  selection = {}
  for key in sorted(images):
    image = images[key]
    match = _NAME.match(image.rpartition("/")[2])
    case = cases[(match["cls"].lower(), int(match["num"]))]
    mask = masks.get(key)
    if mask is None or mask not in case.all_masks():
      raise DatasetError(
          f"BUSI paper437 selection: image {image} would be paired with mask "
          f"{mask} (first-integer key {key})", path=image, example_id=case.id)
    chosen = masks_by_policy(case, "union") if mask_policy == "union" else [
        mask]
    selection[case.id] = (image, tuple(chosen))
  return selection


@dataclasses.dataclass(eq=False)
class BusiConfig(tfds.core.BuilderConfig):
  """BUSI config.

  Attributes:
    selection: "paper437" (the published loader's 437 images) or "full".
    mask_policy: "main", "last_sorted" or "union" (see `masks_by_policy`).
    include_normal: add the 133 normal cases (only with selection "full").
  """

  selection: str = "full"
  mask_policy: str = "union"
  include_normal: bool = False

  def split_files(self) -> Tuple[str, ...]:
    if self.selection == "paper437":
      return ("busi_paper437",)
    return ("busi_full", "busi_normal") if self.include_normal else (
        "busi_full",)


class Busi(ManualBuilder):
  """BUSI breast ultrasound lesion segmentation (manual download)."""

  BUILDER_CONFIGS = [
      BusiConfig(
          name="paper437", selection="paper437", mask_policy="main",
          description="The published loader's 437 images (malignant 1-210, "
                      "benign 211-437), main _mask.png only."),
      BusiConfig(
          name="paper437_last_mask", selection="paper437",
          mask_policy="last_sorted",
          description="paper437 where a case with extra lesions uses its "
                      "last _mask_K.png (sorted listing)."),
      BusiConfig(
          name="full", selection="full", mask_policy="union",
          description="All 647 benign and malignant cases, masks merged by "
                      "union."),
      BusiConfig(
          name="full_with_normal", selection="full", mask_policy="union",
          include_normal=True,
          description="full plus the 133 normal cases (empty masks)."),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "paper437"

  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download the Kaggle dataset "Breast Ultrasound Images Dataset"
(https://www.kaggle.com/datasets/aryashah2k/breast-ultrasound-images-dataset,
Al-Dhabyani et al. 2020) and unzip it. The manual_dir is either the folder
that contains `Dataset_BUSI_with_GT/` or `Dataset_BUSI_with_GT/` itself:

  Dataset_BUSI_with_GT/benign/benign (1).png, benign (1)_mask.png, ...
  Dataset_BUSI_with_GT/malignant/malignant (1).png, ...
  Dataset_BUSI_with_GT/normal/normal (1).png, ...   (config full_with_normal)

Keep the file names as distributed (spaces, parentheses, `_mask_1.png`).
"""

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="Breast ultrasound images with lesion masks (BUSI).",
        features=common_features(
            label=tfds.features.ClassLabel(names=list(CLASSES)),
            case_number=tfds.features.Scalar(dtype=np.int32)),
        homepage="https://scholar.cu.edu.eg/?q=afahmy/pages/dataset",
        citation=_CITATION,
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,
    )

  def _busi_root(self, root: pathlib.Path) -> pathlib.Path:
    if (root / FOLDER).is_dir():
      return root / FOLDER
    return root

  def _scan(self, root: pathlib.Path, bad: BadExamples,
            metadata: Dict[str, Any]) -> List[Record]:
    config: BusiConfig = self.builder_config
    busi = self._busi_root(root)
    wanted = ["benign", "malignant"]
    if config.include_normal:
      wanted.append("normal")
    for cls in wanted:
      if not (busi / cls).is_dir():
        raise DatasetError(
            f"busi: required folder {busi / cls} is missing (expected "
            f"{FOLDER}/{{benign,malignant,normal}} in the manual_dir {root})",
            path=busi / cls)
    refs: Dict[str, FileRef] = {}
    for cls in CLASSES:
      if not (busi / cls).is_dir():
        continue
      for ref in common.list_files(root, busi / cls):
        if cls not in wanted:  # a class this config leaves out
          match = _NAME.match(ref.name)
          if match and not match["mask"]:
            metadata["excluded_ids"].append(case_id(cls, int(match["num"])))
          continue
        if ref.suffix != ".png":
          metadata["ignored_files"].append(ref.rel)
          continue
        refs[f"{cls}/{ref.name}"] = ref
    cases, unrecognised = parse_file_names(refs)
    for name in unrecognised:
      ref = refs[name]
      bad.handle(DatasetError(
          f"busi: unrecognised file name {ref.display} (expected "
          "'<class> (N).png', '<class> (N)_mask.png' or "
          "'<class> (N)_mask_K.png' in the folder of its class)",
          path=ref.display), file=ref.rel)
    good: Dict[str, Case] = {}
    for _, case in sorted(
        cases.items(), key=lambda kv: (CLASSES.index(kv[0][0]), kv[0][1])):
      error = self._case_error(case, refs)
      if error is not None:
        bad.handle(error, file=refs[case.image or case.all_masks()[0]].rel)
        continue
      good[case.id] = case
    metadata["mask_policy"] = config.mask_policy
    if config.selection == "paper437":
      names = [name for case in good.values()
               for name in [case.image] + case.all_masks()]
      chosen = {example_id: list(masks) for example_id, (_, masks)
                in select_paper437(names, config.mask_policy).items()}
    else:
      classes = CLASSES if config.include_normal else CLASSES[:2]
      chosen = {case.id: masks_by_policy(case, config.mask_policy)
                for case in good.values() if case.cls in classes}
    listed = set(common.ids_by_split(
        splitting.load_split_lists(*config.split_files())))
    records = []
    for example_id, case in good.items():
      # paper437: a benign case <= 210 whose malignant namesake is absent
      # here is selected by the emulation but is not one of the 437.
      if example_id not in chosen or example_id not in listed:
        metadata["excluded_ids"].append(example_id)
        continue
      used = chosen[example_id]
      metadata["unused_files"].extend(
          refs[m].rel for m in case.all_masks() if m not in used)
      image = refs[case.image]
      records.append(Record(
          id=example_id, image=image, masks=[refs[m] for m in used],
          source_format=source_format(image),
          extra={"label": case.cls, "case_number": case.number}))
    return records

  def _case_error(self, case: Case, refs: Mapping[str, FileRef]
                  ) -> Optional[DatasetError]:
    if case.number < 1 or case.number > COUNTS[case.cls]:
      name = case.image or case.all_masks()[0]
      return DatasetError(
          f"busi: {refs[name].display} is outside the known composition "
          f"({case.cls} 1-{COUNTS[case.cls]}); the committed splits do not "
          "cover it", path=refs[name].display, example_id=case.id)
    if case.image is None:
      mask = refs[case.all_masks()[0]]
      return DatasetError(f"busi: mask {mask.display} has no image "
                          f"({case.cls} ({case.number}).png)",
                          path=mask.display, example_id=case.id)
    if case.main_mask is None:
      image = refs[case.image]
      return DatasetError(f"busi: image {image.display} has no mask "
                          f"({case.cls} ({case.number})_mask.png)",
                          path=image.display, example_id=case.id)
    return None

  def _assign_splits(self, records: List[Record], bad: BadExamples,
                     metadata: Dict[str, Any]) -> Dict[str, List[Record]]:
    config: BusiConfig = self.builder_config
    files = config.split_files()
    metadata["split_files"] = [f"{name}.json" for name in files]
    split_lists = splitting.load_split_lists(*files)
    listed = set(common.ids_by_split(split_lists))
    for record in records:
      if record.id not in listed:  # cannot happen with the committed files
        raise DatasetError(f"busi: id {record.id} is in no split list of "
                           f"{files}", path=record.image.display)
    return self._assign_from_lists(records, split_lists, bad, metadata)


# BUSI's default for evaluations is the published 437-image selection.
registry.register(registry.DatasetSpec(
    name="busi", builder=Busi, default_config="paper437"))
