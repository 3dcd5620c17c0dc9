"""Deterministic train/validation/test splits, and the committed id lists.

The published code (`src/corpora.py`) splits BUSI and CVC-ClinicDB at random
with Hugging Face `datasets.train_test_split`: 10 % test first, then 10 % of
the rest for validation (81/9/10, global seed 42); its split depends on the
order in which the files were listed, so it cannot be reproduced byte for
byte. We define an 80/10/10 split once, on the KNOWN composition of each
dataset, and commit the id lists (`simsam_jax/data/splits/*.json`, re-created exactly by
`python -m simsam_jax.data.make_splits`):

1. The ids are put in their canonical order (`canonical_order` of each list:
   BUSI class then case number, CVC frame number).
2. `test` = the first `ceil(n / 10)` entries of
   `np.random.RandomState(seed).permutation(n)` applied to that list.
3. The rest, in that permuted order, is permuted again by a fresh
   `RandomState(seed)`; `validation` = its first `ceil(n_rest / 9)` entries
   (10 % of the whole), `train` = the others.

This is the arithmetic of scikit-learn's
`train_test_split(ids, test_size=0.1, random_state=42)` followed by
`train_test_split(rest, test_size=1/9, random_state=42)` (a permutation of a
legacy `RandomState`, test first), with the sizes computed in integers.
`RandomState` is numpy's frozen legacy generator, so the lists do not change
with the numpy version. The committed lists are sorted canonically.

ISIC-2016 has an official test set; its validation set is 10 % of the
official training set, chosen the same way (`validation_subset`) at build time
from the sorted training ids present (the official training ids are not known
offline, so no list is committed; `splits/isic2016.json` holds the rule).

Split schemes (`SPLIT_SCHEMES`; SAM-FT's `config.split_scheme`). The lists
above are the "80_10_10" scheme. The published code
(`src/corpora.py`, `PreprocessingStrategy.train_valid_test_split`) takes 10 %
for test and then 10 % OF THE REST for validation, i.e. 81/9/10. The
"paper_81_9_10" scheme keeps the same test set and the same second
permutation, and takes validation = its first `ceil(n_rest / 10)` entries;
that is a prefix of the "80_10_10" validation, so the scheme is "the
committed lists, with a few validation ids moved into train". Each split
file lists those ids under `schemes.paper_81_9_10.moved_validation_to_train`
(`moved_to_train`). ISIC-2016 needs none: its validation is already 10 % of
the official training set, as in the published code.
"""

from __future__ import annotations

import json
import pathlib
from typing import Dict, List, Sequence, Tuple

import numpy as np

SPLITS_DIR = pathlib.Path(__file__).resolve().parent / "splits"
SPLIT_NAMES = ("train", "validation", "test")
DEFAULT_SEED = 42
# Split scheme -> the validation denominator of the second draw (see above).
SPLIT_SCHEMES = {"80_10_10": 9, "paper_81_9_10": 10}
DEFAULT_SPLIT_SCHEME = "80_10_10"


def _ceil_div(a: int, b: int) -> int:
  return -(-a // b)


def split_80_10_10(ids: Sequence[str], seed: int = DEFAULT_SEED,
                   scheme: str = DEFAULT_SPLIT_SCHEME) -> Dict[str, List[str]]:
  """Random split, test first, then validation from the rest.

  Args:
    ids: distinct example ids in their canonical order (the result depends on
      this order).
    seed: seed of the `np.random.RandomState` used for both draws.
    scheme: "80_10_10" (validation = ceil(n_rest / 9), 10 % of the whole) or
      "paper_81_9_10" (validation = ceil(n_rest / 10), 10 % of the rest, as
      the published code). The test set is the same for both.

  Returns:
    {"train": [...], "validation": [...], "test": [...]}, each list in the
    order of `ids`; test has ceil(n / 10) ids.
  """
  if scheme not in SPLIT_SCHEMES:
    raise ValueError(f"unknown split scheme {scheme!r}; use one of "
                     f"{sorted(SPLIT_SCHEMES)}")
  ids = list(ids)
  if len(set(ids)) != len(ids):
    raise ValueError("ids must be distinct")
  n = len(ids)
  order = {example_id: i for i, example_id in enumerate(ids)}
  permutation = np.random.RandomState(seed).permutation(n)
  n_test = _ceil_div(n, 10)
  test = [ids[i] for i in permutation[:n_test]]
  rest = [ids[i] for i in permutation[n_test:]]
  permutation = np.random.RandomState(seed).permutation(len(rest))
  n_val = _ceil_div(len(rest), SPLIT_SCHEMES[scheme])
  validation = [rest[i] for i in permutation[:n_val]]
  train = [rest[i] for i in permutation[n_val:]]
  by_order = lambda values: sorted(values, key=order.__getitem__)
  return {"train": by_order(train), "validation": by_order(validation),
          "test": by_order(test)}


def validation_subset(ids: Sequence[str], seed: int = DEFAULT_SEED,
                      fraction_denominator: int = 10
                      ) -> Tuple[List[str], List[str]]:
  """Splits a training set into (train, validation), validation ~1/10.

  Args:
    ids: distinct training ids; sorted here first, so the result does not
      depend on the order given.
    seed: seed of `np.random.RandomState`.
    fraction_denominator: validation gets `ceil(n / fraction_denominator)`.

  Returns:
    (train, validation), both sorted.
  """
  ids = sorted(ids)
  if len(set(ids)) != len(ids):
    raise ValueError("ids must be distinct")
  permutation = np.random.RandomState(seed).permutation(len(ids))
  n_val = _ceil_div(len(ids), fraction_denominator) if ids else 0
  chosen = set(permutation[:n_val].tolist())
  validation = [ids[i] for i in range(len(ids)) if i in chosen]
  train = [ids[i] for i in range(len(ids)) if i not in chosen]
  return train, validation


def load_split_file(name: str) -> dict:
  """Reads a committed split file `splits/<name>.json`.

  Args:
    name: file stem, e.g. "busi_paper437", "busi_full", "busi_normal",
      "cvc_clinicdb", "isic2016".

  Returns:
    The parsed JSON object; `["splits"]` maps split names to id lists where
    the file has lists.
  """
  path = SPLITS_DIR / f"{name}.json"
  if not path.is_file():
    raise FileNotFoundError(
        f"split file {path} is missing; re-create it with "
        "`python -m simsam_jax.data.make_splits`")
  with path.open() as f:
    return json.load(f)


def load_split_lists(*names: str) -> Dict[str, List[str]]:
  """The id lists of one or more committed split files, concatenated."""
  merged: Dict[str, List[str]] = {split: [] for split in SPLIT_NAMES}
  for name in names:
    for split, ids in load_split_file(name)["splits"].items():
      merged[split].extend(ids)
  return merged


def moved_to_train(scheme: str, *names: str) -> List[str]:
  """Validation ids that `scheme` trains on, from committed split files.

  Args:
    scheme: a key of `SPLIT_SCHEMES`.
    names: split file stems (as `load_split_lists`).

  Returns:
    The ids (canonical order, files concatenated); [] for "80_10_10".

  Raises:
    ValueError: unknown scheme, or a file without an entry for it.
  """
  if scheme not in SPLIT_SCHEMES:
    raise ValueError(f"unknown split scheme {scheme!r}; use one of "
                     f"{sorted(SPLIT_SCHEMES)}")
  if scheme == DEFAULT_SPLIT_SCHEME:
    return []
  moved: List[str] = []
  for name in names:
    entry = load_split_file(name).get("schemes", {}).get(scheme)
    if entry is None:
      raise ValueError(
          f"split file {name}.json has no {scheme!r} entry; re-create it with "
          "`python -m simsam_jax.data.make_splits`")
    moved.extend(entry["moved_validation_to_train"])
  return moved
