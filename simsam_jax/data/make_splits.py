"""Re-creates the committed split files `simsam_jax/data/splits/*.json`.

    python -m simsam_jax.data.make_splits            # rewrite the files
    python -m simsam_jax.data.make_splits --check    # exit 1 if they differ
    python -m simsam_jax.data.make_splits --out DIR  # write elsewhere

No data is needed: the lists are computed from the known composition of each
dataset (BUSI: benign 1-437, malignant 1-210, normal 1-133; CVC-ClinicDB:
frames 1-612) with `splitting.split_80_10_10` (seed 42):

* `busi_paper437.json`: the 437 ids that `busi.select_paper437` picks from
  the file names of the full release, in its key order (malignant_1..210,
  benign_211..437).
* `busi_full.json`: the 647 benign + malignant ids (benign_1..437 then
  malignant_1..210).
* `busi_normal.json`: the 133 normal ids, split on their own, added to
  `busi_full.json` by the `full_with_normal` config.
* `cvc_clinicdb.json`: cvc_1..cvc_612.
* `isic2016.json`: the rule only (official test set; validation drawn from
  the official training ids present at build time).

Each file also holds `schemes.paper_81_9_10`: the validation ids that the
published 81/9/10 proportions put into train (`splitting.moved_to_train`;
test unchanged). For ISIC-2016 that list is empty.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Dict, List, Optional, Sequence

from simsam_jax.data import busi
from simsam_jax.data import cvc_clinicdb
from simsam_jax.data import splitting

_METHOD = (
    "ids in canonical order; test = first ceil(n/10) of "
    "numpy.random.RandomState(seed).permutation(n); the rest, in permuted "
    "order, permuted again by a fresh RandomState(seed): validation = first "
    "ceil(n_rest/9), train = the others (the arithmetic of sklearn "
    "train_test_split(test_size=0.1, random_state=42) then "
    "train_test_split(test_size=1/9, random_state=42)); lists sorted in "
    "canonical order")

_PAPER_SCHEME = (
    "the published proportions (src/corpora.py: test 10%, then validation "
    "10% of the rest, 81/9/10): same test set and same second permutation, "
    "validation = first ceil(n_rest/10) instead of ceil(n_rest/9); these "
    "validation ids of `splits` go to train")


def _split_entry(dataset: str, config: str, description: str,
                 canonical: Sequence[str], seed: int) -> dict:
  splits = splitting.split_80_10_10(canonical, seed=seed)
  paper = splitting.split_80_10_10(canonical, seed=seed, scheme="paper_81_9_10")
  assert paper["test"] == splits["test"]
  assert set(paper["validation"]) <= set(splits["validation"])
  moved = [i for i in splits["validation"] if i not in set(paper["validation"])]
  return {
      "dataset": dataset,
      "config": config,
      "description": description,
      "generator": "python -m simsam_jax.data.make_splits",
      "seed": seed,
      "method": _METHOD,
      "canonical_order": list(canonical),
      "num_ids": len(canonical),
      "sizes": {name: len(ids) for name, ids in splits.items()},
      "splits": splits,
      "schemes": {"paper_81_9_10": {
          "description": _PAPER_SCHEME,
          "sizes": {name: len(ids) for name, ids in paper.items()},
          "moved_validation_to_train": moved,
      }},
  }


def make_splits(seed: int = splitting.DEFAULT_SEED) -> Dict[str, dict]:
  """All split files, as {file name: JSON object}."""
  paper = list(busi.select_paper437(busi.all_file_names(), "main"))
  return {
      "busi_paper437.json": _split_entry(
          "busi", "paper437",
          "The 437 images of the published BUSI loader (first-integer key "
          "over benign then malignant: malignant 1-210 + benign 211-437), "
          "80/10/10.", paper, seed),
      "busi_full.json": _split_entry(
          "busi", "full",
          "All 647 benign and malignant cases, 80/10/10.",
          busi.canonical_ids(("benign", "malignant")), seed),
      "busi_normal.json": _split_entry(
          "busi", "normal",
          "The 133 normal cases (empty masks), 80/10/10 on their own; added "
          "to busi_full.json by the full_with_normal config.",
          busi.canonical_ids(("normal",)), seed),
      "cvc_clinicdb.json": _split_entry(
          "cvc_clinicdb", "default", "All 612 frames, 80/10/10.",
          cvc_clinicdb.canonical_ids(), seed),
      "isic2016.json": {
          "dataset": "isic2016",
          "generator": "python -m simsam_jax.data.make_splits",
          "seed": seed,
          "validation_fraction_denominator": 10,
          "test": "the official ISBI2016_ISIC_Part1_Test set",
          "validation": (
              "ceil(n/10) of the official Training ids present at build "
              "time: sorted ids, then the first ceil(n/10) indices of "
              "numpy.random.RandomState(seed).permutation(n); not listed "
              "here because the official ids are not known offline"),
          "train": "the other official Training ids",
          "schemes": {"paper_81_9_10": {
              "description": (
                  "the validation rule above is already the published one "
                  "(10% of the official training set): nothing moves"),
              "moved_validation_to_train": [],
          }},
      },
  }


def render(obj: dict) -> str:
  """The exact text written for one split file."""
  return json.dumps(obj, indent=1) + "\n"


def write_splits(out_dir: pathlib.Path, seed: int = splitting.DEFAULT_SEED
                 ) -> List[pathlib.Path]:
  """Writes every split file into `out_dir`; returns their paths."""
  out_dir.mkdir(parents=True, exist_ok=True)
  written = []
  for name, obj in make_splits(seed).items():
    path = out_dir / name
    path.write_text(render(obj))
    written.append(path)
  return written


def check_splits(directory: pathlib.Path = splitting.SPLITS_DIR) -> List[str]:
  """Names of the split files in `directory` that differ from `make_splits`."""
  stale = []
  for name, obj in make_splits().items():
    path = directory / name
    if not path.is_file() or path.read_text() != render(obj):
      stale.append(name)
  return stale


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=pathlib.Path, default=splitting.SPLITS_DIR,
                      help="output folder (default: the committed one)")
  parser.add_argument("--check", action="store_true",
                      help="only compare; exit status 1 when files differ")
  args = parser.parse_args(argv)
  if args.check:
    stale = check_splits(args.out)
    for name in stale:
      print(f"differs: {args.out / name}")
    return 1 if stale else 0
  for path in write_splits(args.out):
    print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
