"""Committed splits and the BUSI paper437 selection (no images needed)."""

from __future__ import annotations

import random

import pytest

from data_fixtures import all_busi_names
from simsam_jax.data import busi
from simsam_jax.data import make_splits
from simsam_jax.data import splitting
from simsam_jax.data.common import DatasetError

PAPER437 = ([f"malignant_{n}" for n in range(1, 211)]
            + [f"benign_{n}" for n in range(211, 438)])


def test_committed_files_equal_generator_output(tmp_path):
  assert make_splits.check_splits() == []
  assert make_splits.main(["--check"]) == 0
  written = make_splits.write_splits(tmp_path)
  assert sorted(p.name for p in written) == sorted(
      p.name for p in splitting.SPLITS_DIR.glob("*.json"))
  for path in written:
    assert path.read_text() == (splitting.SPLITS_DIR / path.name).read_text()


def test_check_detects_a_stale_file(tmp_path):
  make_splits.write_splits(tmp_path)
  (tmp_path / "cvc_clinicdb.json").write_text("{}\n")
  assert make_splits.check_splits(tmp_path) == ["cvc_clinicdb.json"]
  assert make_splits.main(["--check", "--out", str(tmp_path)]) == 1


@pytest.mark.parametrize("name, n, sizes", [
    ("busi_paper437", 437, (349, 44, 44)),
    ("busi_full", 647, (517, 65, 65)),
    ("busi_normal", 133, (105, 14, 14)),
    ("cvc_clinicdb", 612, (488, 62, 62)),
])
def test_split_sizes_disjoint_and_complete(name, n, sizes):
  data = splitting.load_split_file(name)
  splits = data["splits"]
  assert data["seed"] == 42 and data["num_ids"] == n
  assert tuple(len(splits[s]) for s in ("train", "validation", "test")) == sizes
  all_ids = splits["train"] + splits["validation"] + splits["test"]
  assert len(set(all_ids)) == n
  assert sorted(all_ids) == sorted(data["canonical_order"])
  order = {i: n for n, i in enumerate(data["canonical_order"])}
  for ids in splits.values():  # stored in canonical order
    assert ids == sorted(ids, key=order.__getitem__)


def test_paper437_split_covers_exactly_the_selection():
  data = splitting.load_split_file("busi_paper437")
  assert data["canonical_order"] == PAPER437
  full = splitting.load_split_file("busi_full")
  assert set(full["canonical_order"]) == (
      {f"benign_{n}" for n in range(1, 438)}
      | {f"malignant_{n}" for n in range(1, 211)})


def test_split_algorithm_is_test_first_then_validation():
  ids = [f"x{i}" for i in range(100)]
  splits = splitting.split_80_10_10(ids, seed=42)
  assert splits == splitting.split_80_10_10(ids, seed=42)
  assert [len(splits[s]) for s in ("train", "validation", "test")] == [80, 10,
                                                                      10]
  import numpy as np  # pylint: disable=import-outside-toplevel
  permutation = np.random.RandomState(42).permutation(100)
  assert set(splits["test"]) == {ids[i] for i in permutation[:10]}
  assert splitting.split_80_10_10(ids, seed=1) != splits


def test_validation_subset_is_order_independent():
  ids = [f"ISIC_{i:07d}" for i in range(900)]
  shuffled = list(ids)
  random.Random(0).shuffle(shuffled)
  train, validation = splitting.validation_subset(ids)
  assert (train, validation) == splitting.validation_subset(shuffled)
  assert len(validation) == 90 and len(train) == 810
  assert not set(train) & set(validation)
  assert splitting.validation_subset(ids[:7])[1] != []  # ceil(7/10) = 1
  assert splitting.validation_subset([]) == ([], [])


def test_select_paper437_on_the_780_file_names():
  names = all_busi_names()
  assert len(names) == 2 * 780
  selection = busi.select_paper437(names)
  assert list(selection) == PAPER437
  assert selection["malignant_1"] == ("malignant/malignant (1).png",
                                      ("malignant/malignant (1)_mask.png",))
  assert selection["benign_437"] == ("benign/benign (437).png",
                                     ("benign/benign (437)_mask.png",))
  assert not any(i.startswith("normal") for i in selection)
  # Order of the listing does not matter.
  shuffled = list(names)
  random.Random(3).shuffle(shuffled)
  assert busi.select_paper437(shuffled) == selection


def test_select_paper437_mask_policies():
  extra = ["benign/benign (300)_mask_1.png", "benign/benign (300)_mask_2.png",
           "benign/benign (25)_mask_1.png",
           "malignant/malignant (10)_mask_1.png"]
  names = all_busi_names(extra)
  main = busi.select_paper437(names, "main")
  last = busi.select_paper437(names, "last_sorted")
  union = busi.select_paper437(names, "union")
  assert list(main) == list(last) == list(union) == PAPER437
  assert main["benign_300"][1] == ("benign/benign (300)_mask.png",)
  assert last["benign_300"][1] == ("benign/benign (300)_mask_2.png",)
  assert union["benign_300"][1] == ("benign/benign (300)_mask.png",
                                    "benign/benign (300)_mask_1.png",
                                    "benign/benign (300)_mask_2.png")
  # benign (25)'s extra mask is overwritten by malignant (25)'s mask.
  assert last["malignant_25"][1] == ("malignant/malignant (25)_mask.png",)
  assert last["malignant_10"][1] == ("malignant/malignant (10)_mask_1.png",)
  with pytest.raises(ValueError, match="mask_policy"):
    busi.select_paper437(names, "first")


def test_select_paper437_refuses_a_cross_case_pairing():
  names = [n for n in all_busi_names()
           if n != "malignant/malignant (7)_mask.png"]
  with pytest.raises(DatasetError, match=r"malignant \(7\)\.png") as info:
    busi.select_paper437(names)
  assert info.value.path == "malignant/malignant (7).png"


def test_parse_file_names_sorts_out_masks_and_strangers():
  cases, unrecognised = busi.parse_file_names([
      "benign/benign (25).png", "benign/benign (25)_mask.png",
      "benign/benign (25)_mask_1.png", "benign/malignant (2).png",
      "benign/benign (3) copy.png"])
  case = cases[("benign", 25)]
  assert case.image == "benign/benign (25).png"
  assert case.all_masks() == ["benign/benign (25)_mask.png",
                              "benign/benign (25)_mask_1.png"]
  assert unrecognised == ["benign/malignant (2).png",
                          "benign/benign (3) copy.png"]
