"""The generated `phantom` dataset: deterministic, reproducible, usable like BUSI."""

import numpy as np
import pytest
from scipy import ndimage

from simsam_jax import synthetic
from simsam_jax.data import loading, phantom, protocols


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  return loading.load_split("phantom", "all", data_dir, None, "small"), data_dir


def test_splits_ids_and_sizes(small):
  examples, _ = small
  config = phantom.Phantom.builder_configs["small"]
  by_split = {s: [e["id"] for e in examples if e["split"] == s] for s in phantom.SPLITS}
  assert {s: len(v) for s, v in by_split.items()} == config.split_sizes()
  assert by_split["train"] == [f"phantom_{i:03d}" for i in range(4)]
  assert by_split["test"] == [f"phantom_{i:03d}" for i in range(6, 10)]
  sizes = {(e["height"], e["width"]) for e in examples}
  assert len(sizes) > 1  # several input shapes, as with real data
  for e in examples:
    assert config.min_side <= e["height"] <= config.max_side
    assert config.min_side <= e["width"] <= config.max_side
    assert e["image"].shape == (e["height"], e["width"], 3) and e["image"].dtype == np.uint8
    assert set(np.unique(e["mask"])) == {0, 255}
    assert e["mask_mode"] == "1" and e["source_format"] == "synthetic"


def test_image_file_is_the_segment_spec_that_redraws_it(small):
  """`image_file` is a `--image=synthetic:SEED:HxW` value giving the same arrays."""
  examples, _ = small
  for e in examples:
    assert e["image_file"] == f"synthetic:{e['seed']}:{e['height']}x{e['width']}"
    image, mask, _ = synthetic.parse_image_spec(e["image_file"])
    np.testing.assert_array_equal(image, e["image"])
    np.testing.assert_array_equal(mask, e["mask"] > 0)


def test_build_is_deterministic(small, tmp_path):
  examples, _ = small
  again = loading.load_split("phantom", "all", tmp_path, None, "small")
  assert [e["id"] for e in again] == [e["id"] for e in examples]
  for a, b in zip(again, examples):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["mask"], b["mask"])


def test_default_config_layout():
  config = phantom.Phantom.builder_configs["default"]
  seeds = phantom.split_seeds(config)
  assert [len(seeds[s]) for s in phantom.SPLITS] == [16, 8, 24]
  assert seeds["test"].start == 24  # disjoint, contiguous ranges
  sizes = [phantom.example_size(s, config.min_side, config.max_side) for s in seeds["test"]]
  assert all(160 <= h <= 320 and 160 <= w <= 320 for h, w in sizes)


@pytest.mark.parametrize("protocol", ["paper", "native"])
def test_protocols_prepare_phantoms_like_busi(small, protocol):
  examples, _ = small
  e = examples[0]
  prepared = protocols.prepare(e, protocol, "phantom")
  side = 256 if protocol == "paper" else None
  assert prepared.image.shape[:2] == ((side, side) if side else (e["height"], e["width"]))
  assert prepared.mask.any()
  ys, xs = np.nonzero(prepared.mask)
  np.testing.assert_array_equal(prepared.box, [xs.min(), ys.min(), xs.max(), ys.max()])
  assert prepared.file_names == (e["image_file"], e["image_file"])


def test_boundary_is_soft():
  """The echo level changes gradually across the contour (no hard step)."""
  image, mask, _ = synthetic.phantom(200, 240, seed=3)
  grey = image[..., 0].astype(float)
  inside = ndimage.distance_transform_edt(mask)
  outside = ndimage.distance_transform_edt(~mask)
  deep_in = grey[inside > 6].mean()
  far_out = grey[(outside > 6) & (outside < 15)].mean()
  ring_in = grey[(inside > 0) & (inside <= 1)].mean()
  ring_out = grey[(outside > 0) & (outside <= 1)].mean()
  assert deep_in < ring_in < ring_out < far_out


def test_no_skipped_files_and_bad_arguments(small, tmp_path):
  _, data_dir = small
  assert loading.skipped_examples(loading.get_builder("phantom", data_dir, "small")) == []
  with pytest.raises(ValueError, match="on_bad_example"):
    loading.get_builder("phantom", tmp_path, "small", on_bad_example="ignore")
  with pytest.raises(ValueError, match="split 'val'"):
    loading.load_split("phantom", "val", data_dir, None, "small")
