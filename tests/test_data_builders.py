"""TFDS builders on the real samples and on generated trees (no TensorFlow)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import data_fixtures as fx
from simsam_jax import data as ssd
from simsam_jax.data import DatasetError, load_split, skipped_examples
from simsam_jax.data import loading


def _by_id(examples):
  return {e["id"]: e for e in examples}


def _build(name, tmp_path, manual_dir, config=None, on_bad_example="raise"):
  return loading.prepare_builder(name, tmp_path / "tfds", manual_dir, config,
                                 on_bad_example)


def _binary(mask):
  return set(np.unique(mask).tolist()) <= {0, 255}


# ----------------------------------------------------------------------------
# Environment.
# ----------------------------------------------------------------------------


def test_builders_are_registered_and_need_no_tensorflow(tmp_path):
  assert importlib.util.find_spec("tensorflow") is None
  for name in ("busi", "cvc_clinicdb", "isic2016"):
    assert name in tfds.list_builders(with_community_datasets=False)
  manual = fx.make_cvc_tree(tmp_path / "cvc", frames=(3,), png=False)
  source = tfds.data_source(
      "cvc_clinicdb", split="all", data_dir=tmp_path / "tfds",
      download_and_prepare_kwargs={
          "download_config": tfds.download.DownloadConfig(manual_dir=manual)})
  assert len(source) == 1
  example = source[0]
  assert example["id"] in (b"cvc_3", "cvc_3")
  assert example["image"].shape == (fx.CVC_H, fx.CVC_W, 3)
  assert "tensorflow" not in sys.modules


# ----------------------------------------------------------------------------
# Real samples (shared/data).
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_busi(shared_data, tmp_path_factory):
  tmp = tmp_path_factory.mktemp("busi_real")
  manual = shared_data / "busi"
  return {config: load_split("busi", "all", tmp, manual, config)
          for config in ("paper437", "full", "full_with_normal")}, tmp


def test_real_busi_full_with_normal(real_busi, shared_data):
  examples = _by_id(real_busi[0]["full_with_normal"])
  assert sorted(examples) == sorted(
      [f"benign_{n}" for n in (15, 16, 18, 25, 26)]
      + [f"malignant_{n}" for n in (1, 2, 3, 14, 21)]
      + ["normal_1", "normal_46"])
  folder = shared_data / "busi" / "Dataset_BUSI_with_GT"
  for example in examples.values():
    cls = example["label"]
    number = example["case_number"]
    assert example["id"] == f"{cls}_{number}"
    assert example["image_file"] == (
        f"Dataset_BUSI_with_GT/{cls}/{cls} ({number}).png")
    image = np.asarray(Image.open(folder / cls / f"{cls} ({number}).png")
                       .convert("RGB"))
    np.testing.assert_array_equal(example["image"], image)
    assert (example["height"], example["width"]) == image.shape[:2]
    assert example["mask"].shape == image.shape[:2]
    assert example["mask"].dtype == np.uint8 and _binary(example["mask"])
    assert example["source_format"] == "png"
    assert example["split"] in ("train", "validation", "test")
  assert examples["benign_15"]["mask_mode"] == "1"
  assert examples["normal_1"]["mask_mode"] == "RGB"
  assert not examples["normal_1"]["mask"].any()
  # benign (25): two lesions merged by union.
  b25 = examples["benign_25"]
  assert b25["mask_files"] == (
      "Dataset_BUSI_with_GT/benign/benign (25)_mask.png",
      "Dataset_BUSI_with_GT/benign/benign (25)_mask_1.png")
  m0 = np.asarray(Image.open(folder / "benign" / "benign (25)_mask.png"))
  m1 = np.asarray(Image.open(folder / "benign" / "benign (25)_mask_1.png"))
  np.testing.assert_array_equal(b25["mask"] > 0, m0 | m1)
  assert (b25["mask"] > 0).sum() > max(m0.sum(), m1.sum())


def test_real_busi_paper437_and_full(real_busi):
  results, tmp = real_busi
  paper = _by_id(results["paper437"])
  # benign 15-26 are not among the 437 (malignant 15-26 overwrite them).
  assert sorted(paper) == sorted(
      f"malignant_{n}" for n in (1, 2, 3, 14, 21))
  assert all(len(e["mask_files"]) == 1 for e in paper.values())
  full = _by_id(results["full"])
  assert len(full) == 10 and not any(i.startswith("normal") for i in full)
  builder = loading.get_builder("busi", tmp, "paper437")
  metadata = ssd.build_metadata(builder)
  assert sorted(metadata["excluded_ids"]) == sorted(
      [f"benign_{n}" for n in (15, 16, 18, 25, 26)] + ["normal_1",
                                                        "normal_46"])
  assert sum(metadata["num_missing_ids"].values()) == 437 - 5
  assert skipped_examples(builder) == []
  splits = ssd.splitting.load_split_lists("busi_paper437")
  for example in paper.values():
    assert example["id"] in splits[example["split"]]


def test_real_cvc(shared_data, tmp_path):
  examples = _by_id(load_split("cvc_clinicdb", "all", tmp_path / "tfds",
                               shared_data / "cvc_clinicdb"))
  frames = (12, 60, 90, 115, 190, 256, 330, 372, 418, 472, 515, 580)
  with pytest.raises(Exception):  # why the builder reads TIFF with tifffile
    Image.open(shared_data / "cvc_clinicdb" / "Original" / "12.tif")
  assert sorted(examples) == sorted(f"cvc_{n}" for n in frames)
  noisy = 0
  for frame in frames:
    example = examples[f"cvc_{frame}"]
    assert example["source_format"] == "tiff"
    assert example["image_file"] == f"Original/{frame}.tif"
    assert example["mask_files"] == (f"Ground Truth/{frame}.tif",)
    assert example["image"].shape == (288, 384, 3)
    assert example["mask"].shape == (288, 384) and example["frame"] == frame
    png = np.asarray(Image.open(shared_data / "cvc_clinicdb" / "PNG" /
                                "Original" / f"{frame}.png").convert("RGB"))
    np.testing.assert_array_equal(example["image"], png)
    noisy += not _binary(example["mask"])
  assert noisy >= 1  # frame 12 holds grey noise; it is kept raw
  builder = loading.get_builder("cvc_clinicdb", tmp_path / "tfds")
  metadata = ssd.build_metadata(builder)
  assert metadata["source_format_counts"] == {"tiff": 12}
  assert len(metadata["unused_files"]) == 24  # the PNG repack


def test_real_isic_training_only(shared_data, tmp_path):
  examples = load_split("isic2016", "all", tmp_path / "tfds",
                        shared_data / "isic2016")
  ids = sorted(e["id"] for e in examples)
  assert ids == ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002",
                 "ISIC_0000004", "ISIC_0000006", "ISIC_0000050",
                 "ISIC_0000193"]
  assert sorted(e["split"] for e in examples).count("validation") == 1
  for example in examples:
    assert example["official_split"] == "Training"
    assert example["source_format"] == "jpeg"
    assert example["mask_mode"] == "L" and _binary(example["mask"])
    assert example["mask"].shape == example["image"].shape[:2]
  sizes = {e["id"]: (e["height"], e["width"]) for e in examples}
  assert sizes["ISIC_0000050"] == (1129, 1504)
  with pytest.raises(ValueError, match="absent because empty: .'test'."):
    load_split("isic2016", "test", tmp_path / "tfds")


# ----------------------------------------------------------------------------
# Generated trees.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("config, expected", [
    ("paper437", ["malignant_5", "malignant_7", "benign_211", "benign_300"]),
    ("paper437_last_mask", ["malignant_5", "malignant_7", "benign_211",
                            "benign_300"]),
    ("full", ["benign_5", "benign_8", "benign_211", "benign_300",
              "malignant_5", "malignant_7"]),
    ("full_with_normal", ["benign_5", "benign_8", "benign_211", "benign_300",
                          "malignant_5", "malignant_7", "normal_3"]),
])
def test_generated_busi_configs(tmp_path, config, expected):
  manual = fx.make_busi_tree(tmp_path / "busi")
  examples = _by_id(load_split("busi", "all", tmp_path / "tfds", manual,
                               config))
  assert sorted(examples) == sorted(expected)
  b300 = examples["benign_300"]
  boxes = [fx.busi_boxes("benign", 300, k) for k in range(3)]
  masks = [fx.box_mask(fx.H, fx.W, b) for b in boxes]
  files = [f"Dataset_BUSI_with_GT/benign/benign (300){s}.png"
           for s in ("_mask", "_mask_1", "_mask_2")]
  if config == "paper437":
    want, want_files = masks[0], files[:1]
  elif config == "paper437_last_mask":
    want, want_files = masks[2], files[2:]
  else:
    want, want_files = masks[0] | masks[1] | masks[2], files
  np.testing.assert_array_equal(b300["mask"] > 0, want)
  ys, xs = np.nonzero(want)
  np.testing.assert_array_equal(ssd.prepare(b300, "native", "busi").box,
                                [xs.min(), ys.min(), xs.max(), ys.max()])
  assert b300["mask_files"] == tuple(want_files)
  assert b300["mask_mode"] == "1" and _binary(b300["mask"])
  assert b300["label"] == "benign" and b300["case_number"] == 300
  assert (b300["height"], b300["width"]) == (fx.H, fx.W)
  if "normal_3" in examples:
    assert examples["normal_3"]["mask_mode"] == "RGB"
    assert not examples["normal_3"]["mask"].any()
    assert examples["normal_3"]["label"] == "normal"


def test_generated_busi_manual_dir_is_the_kaggle_folder(tmp_path):
  fx.make_busi_tree(tmp_path / "busi")
  inner = tmp_path / "busi" / "Dataset_BUSI_with_GT"
  examples = load_split("busi", "all", tmp_path / "tfds", inner, "full")
  assert len(examples) == 6
  assert {e["image_file"].split("/")[0] for e in examples} == {"benign",
                                                               "malignant"}


def test_generated_busi_splits_follow_the_lists(tmp_path):
  manual = fx.make_busi_tree(tmp_path / "busi")
  builder = _build("busi", tmp_path, manual, "full")
  lists = ssd.splitting.load_split_lists("busi_full")
  metadata = ssd.build_metadata(builder)
  total = 0
  for split in builder.info.splits:
    ids = [e["id"] for e in loading.iter_split(builder, split)]
    assert ids == [i for i in lists[split] if i in set(ids)]
    total += len(ids)
    assert metadata["num_missing_ids"][split] == len(lists[split]) - len(ids)
  assert total == 6
  assert metadata["excluded_ids"] == ["normal_3"]


def test_generated_cvc_tiff_and_png(tmp_path):
  manual = fx.make_cvc_tree(tmp_path / "cvc", frames=(1, 12, 600),
                            png_frames=(12, 600, 77))
  examples = _by_id(load_split("cvc_clinicdb", "all", tmp_path / "tfds",
                               manual))
  assert sorted(examples) == ["cvc_1", "cvc_12", "cvc_600", "cvc_77"]
  assert examples["cvc_12"]["source_format"] == "tiff"
  assert examples["cvc_77"]["source_format"] == "png"
  assert examples["cvc_77"]["image_file"] == "PNG/Original/77.png"
  assert examples["cvc_77"]["mask_files"] == ("PNG/Ground Truth/77.png",)
  for frame in (1, 12, 600, 77):
    example = examples[f"cvc_{frame}"]
    np.testing.assert_array_equal(example["mask"], fx.cvc_mask(frame))
    np.testing.assert_array_equal(example["image"],
                                  fx.rng_image(1000 + frame, fx.CVC_H,
                                               fx.CVC_W))
    assert set(np.unique(example["mask"]).tolist()) == {0, 5, 11, 112, 255}
  metadata = ssd.build_metadata(loading.get_builder("cvc_clinicdb",
                                                    tmp_path / "tfds"))
  assert metadata["source_format_counts"] == {"tiff": 3, "png": 1}
  assert sorted(metadata["unused_files"]) == sorted(
      ["PNG/Original/12.png", "PNG/Ground Truth/12.png",
       "PNG/Original/600.png", "PNG/Ground Truth/600.png"])


def test_generated_cvc_tiff_is_like_the_release(tmp_path):
  manual = fx.make_cvc_tree(tmp_path / "cvc", frames=(4,), png=False)
  with pytest.raises(Exception):
    Image.open(manual / "Original" / "4.tif")


def test_generated_cvc_png_repack_only(tmp_path):
  manual = fx.make_cvc_tree(tmp_path / "cvc", frames=(5, 6), tiff=False)
  examples = load_split("cvc_clinicdb", "all", tmp_path / "tfds", manual)
  assert sorted(e["id"] for e in examples) == ["cvc_5", "cvc_6"]
  assert {e["mask_mode"] for e in examples} == {"RGB"}


@pytest.mark.parametrize("as_zip", [False, True])
def test_generated_isic_with_test(tmp_path, as_zip):
  manual = fx.make_isic_tree(tmp_path / "isic", as_zip=as_zip)
  builder = _build("isic2016", tmp_path, manual)
  by_split = {split: _by_id(loading.iter_split(builder, split))
              for split in ("train", "validation", "test")}
  assert sorted(by_split["test"]) == list(fx.ISIC_TEST)
  assert len(by_split["validation"]) == 2  # ceil(11 / 10)
  assert sorted(list(by_split["train"]) + list(by_split["validation"])) == (
      sorted(fx.ISIC_TRAIN))
  _, validation = ssd.splitting.validation_subset(fx.ISIC_TRAIN)
  assert sorted(by_split["validation"]) == validation
  example = by_split["test"]["ISIC_0000003"]
  assert example["official_split"] == "Test"
  prefix = "ISBI2016_ISIC_Part1_Test_Data"
  expected = (f"{prefix}.zip/{prefix}/ISIC_0000003.jpg" if as_zip
              else f"{prefix}/ISIC_0000003.jpg")
  assert example["image_file"] == expected
  lower = ({**by_split["train"], **by_split["validation"]})["ISIC_0000001"]
  assert lower["mask_files"][0].endswith("ISIC_0000001_segmentation.png")
  for examples in by_split.values():
    for e in examples.values():
      assert _binary(e["mask"]) and e["mask"].any()
      assert e["mask"].shape == e["image"].shape[:2] == (e["height"],
                                                         e["width"])
  metadata = ssd.build_metadata(builder)
  assert metadata["absent_splits"] == []
  assert any(f.endswith("LICENSE.txt") for f in metadata["ignored_files"])


def test_generated_isic_without_test_has_no_test_split(tmp_path):
  manual = fx.make_isic_tree(tmp_path / "isic", test=(), as_zip=True)
  builder = _build("isic2016", tmp_path, manual)
  assert set(builder.info.splits) == {"train", "validation"}
  assert ssd.build_metadata(builder)["absent_splits"] == ["test"]


# ----------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------


def test_missing_manual_dir(tmp_path):
  missing = tmp_path / "nowhere"
  for name in ("busi", "cvc_clinicdb", "isic2016"):
    with pytest.raises(DatasetError, match="nowhere") as info:
      _build(name, tmp_path, missing)
    assert info.value.path == str(missing)


def test_missing_required_folders(tmp_path):
  manual = fx.make_busi_tree(tmp_path / "busi")
  shutil.rmtree(manual / "Dataset_BUSI_with_GT" / "malignant")
  with pytest.raises(DatasetError, match="malignant") as info:
    _build("busi", tmp_path, manual, "full")
  assert info.value.path.endswith("malignant")
  manual = fx.make_busi_tree(tmp_path / "busi2",
                             {("benign", 211): 0, ("malignant", 2): 0})
  with pytest.raises(DatasetError, match="normal"):
    _build("busi", tmp_path, manual, "full_with_normal")
  manual = fx.make_cvc_tree(tmp_path / "cvc", png=False)
  shutil.rmtree(manual / "Ground Truth")
  with pytest.raises(DatasetError, match="Ground Truth"):
    _build("cvc_clinicdb", tmp_path, manual)
  manual = fx.make_isic_tree(tmp_path / "isic")
  shutil.rmtree(manual / "ISBI2016_ISIC_Part1_Training_GroundTruth")
  with pytest.raises(DatasetError, match="Training_GroundTruth"):
    _build("isic2016", tmp_path, manual)
  manual = fx.make_isic_tree(tmp_path / "isic2")
  shutil.rmtree(manual / "ISBI2016_ISIC_Part1_Test_GroundTruth")
  with pytest.raises(DatasetError, match="Test_GroundTruth"):
    _build("isic2016", tmp_path, manual)


def _corrupt_busi(tmp_path):
  """A BUSI tree with one bad case of each kind; returns (manual, bad)."""
  manual = fx.make_busi_tree(tmp_path / "busi")
  folder = manual / "Dataset_BUSI_with_GT"
  unreadable = folder / "benign" / "benign (5).png"
  unreadable.write_bytes(b"not a png at all")
  resized = folder / "malignant" / "malignant (7)_mask.png"
  Image.open(resized).resize((fx.W + 1, fx.H)).save(resized)
  no_mask = folder / "benign" / "benign (8)_mask.png"
  no_mask.unlink()
  return manual, {"benign_5": unreadable, "malignant_7": resized,
                  "benign_8": folder / "benign" / "benign (8).png"}


@pytest.mark.parametrize("case", ["benign_5", "malignant_7", "benign_8"])
def test_bad_busi_input_raises_naming_the_file(tmp_path, case):
  manual, bad = _corrupt_busi(tmp_path)
  others = [p for c, p in bad.items() if c != case]
  # Repair the other two so that exactly one problem is left.
  fx.make_busi_tree(tmp_path / "clean")
  clean = tmp_path / "clean" / "Dataset_BUSI_with_GT"
  for path in others:
    rel = path.relative_to(manual / "Dataset_BUSI_with_GT")
    shutil.copy(clean / rel, path)
    if path.name == "benign (8).png":
      shutil.copy(clean / "benign" / "benign (8)_mask.png",
                  path.with_name("benign (8)_mask.png"))
  with pytest.raises(DatasetError) as info:
    _build("busi", tmp_path, manual, "full")
  assert info.value.path == str(bad[case].resolve())
  assert str(bad[case].resolve()) in str(info.value)
  assert info.value.example_id == case


def test_bad_busi_input_skipped_and_recorded(tmp_path):
  manual, bad = _corrupt_busi(tmp_path)
  builder = _build("busi", tmp_path, manual, "full", on_bad_example="skip")
  ids = sorted(e["id"] for e in loading.iter_split(builder, "all"))
  assert ids == ["benign_211", "benign_300", "malignant_5"]
  skipped = skipped_examples(builder)
  assert sorted(r["id"] for r in skipped) == sorted(bad)
  assert {r["path"] for r in skipped} == {str(p.resolve())
                                          for p in bad.values()}
  assert all(r["reason"] for r in skipped)
  assert ssd.build_metadata(builder)["skipped"] == skipped
  on_disk = json.loads((builder.data_path / "skipped.json").read_text())
  assert on_disk == skipped


def test_bad_cvc_and_isic_input(tmp_path):
  manual = fx.make_cvc_tree(tmp_path / "cvc", frames=(1, 2), png=False)
  (manual / "Ground Truth" / "2.tif").unlink()
  with pytest.raises(DatasetError, match=r"Original/2\.tif.*has no mask"):
    _build("cvc_clinicdb", tmp_path, manual)
  builder = _build("cvc_clinicdb", tmp_path, manual, on_bad_example="skip")
  assert [e["id"] for e in loading.iter_split(builder, "all")] == ["cvc_1"]
  assert [r["file"] for r in skipped_examples(builder)] == ["Original/2.tif"]

  manual = fx.make_isic_tree(tmp_path / "isic", as_zip=True)
  archive = manual / "ISBI2016_ISIC_Part1_Training_GroundTruth.zip"
  with zipfile.ZipFile(archive, "a") as z:
    z.writestr("ISBI2016_ISIC_Part1_Training_GroundTruth/"
               "ISIC_0000099_Segmentation.png", b"orphan")
  with pytest.raises(DatasetError, match="ISIC_0000099_Segmentation.png"):
    _build("isic2016", tmp_path / "a", manual)
  builder = _build("isic2016", tmp_path / "b", manual, on_bad_example="skip")
  assert [r["id"] for r in skipped_examples(builder)] == ["ISIC_0000099"]
  n = sum(len(builder.as_data_source(split=s)) for s in builder.info.splits)
  assert n == len(fx.ISIC_TRAIN) + len(fx.ISIC_TEST)


def test_unknown_id_is_bad_input(tmp_path):
  manual = fx.make_busi_tree(tmp_path / "busi", {("benign", 438): 0,
                                                 ("malignant", 3): 0})
  with pytest.raises(DatasetError, match=r"benign \(438\).*known composition"):
    _build("busi", tmp_path, manual, "full")


def test_on_bad_example_is_validated(tmp_path):
  with pytest.raises(ValueError, match="on_bad_example"):
    loading.get_builder("busi", tmp_path, "full", on_bad_example="ignore")


def test_undecodable_image_behind_a_valid_header(tmp_path):
  """Header check passes, decoding fails: caught while writing the split."""
  manual = fx.make_isic_tree(tmp_path / "isic", test=())
  train, _ = ssd.splitting.validation_subset(fx.ISIC_TRAIN)
  victim = (manual / "ISBI2016_ISIC_Part1_Training_Data" /
            f"{train[0]}.jpg")
  data = victim.read_bytes()
  victim.write_bytes(data[:len(data) // 2])
  with pytest.raises(DatasetError, match="(?i)truncated") as info:
    _build("isic2016", tmp_path / "a", manual)
  assert info.value.path == str(victim.resolve())
  builder = _build("isic2016", tmp_path / "b", manual, on_bad_example="skip")
  assert [r["id"] for r in skipped_examples(builder)] == [train[0]]
  assert builder.info.splits["train"].num_examples == len(train) - 1


# ----------------------------------------------------------------------------
# Full composition (tiny generated images): the committed lists, complete.
# ----------------------------------------------------------------------------


def test_full_busi_composition(tmp_path):
  cases = {(cls, n): int(n % 50 == 0)
           for cls, count in (("benign", 437), ("malignant", 210),
                              ("normal", 133))
           for n in range(1, count + 1)}
  manual = fx.make_busi_tree(tmp_path / "busi", cases)
  expected = {"paper437": ((349, 44, 44), 210 + 133),
              "full": ((517, 65, 65), 133),
              "full_with_normal": ((622, 79, 79), 0)}
  for config, (sizes, excluded) in expected.items():
    builder = _build("busi", tmp_path, manual, config)
    assert tuple(builder.info.splits[s].num_examples
                 for s in ("train", "validation", "test")) == sizes
    metadata = ssd.build_metadata(builder)
    assert len(metadata["excluded_ids"]) == excluded
    assert sum(metadata["num_missing_ids"].values()) == 0
    assert metadata["absent_splits"] == []
  paper = loading.iter_split(_build("busi", tmp_path, manual, "paper437"),
                             "all")
  assert sorted(e["id"] for e in paper) == sorted(
      ssd.select_paper437(fx.all_busi_names()))


def test_full_cvc_composition(tmp_path):
  manual = fx.make_cvc_tree(tmp_path / "cvc", frames=range(1, 613),
                            png_frames=range(600, 613))
  builder = _build("cvc_clinicdb", tmp_path, manual)
  assert tuple(builder.info.splits[s].num_examples
               for s in ("train", "validation", "test")) == (488, 62, 62)
  metadata = ssd.build_metadata(builder)
  assert metadata["source_format_counts"] == {"tiff": 612}
  assert len(metadata["unused_files"]) == 2 * 13
