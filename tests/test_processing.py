"""Tests of simsam_jax.processing against Hugging Face and the official SAM.

References:
* Hugging Face `transformers.SamImageProcessor` / `SamProcessor` (without
  torchvision it falls back to its PIL backend, the one that resizes with PIL
  bilinear exactly like the official predictor).
* The official `segment_anything` code. Its `utils/transforms.py` imports
  torchvision, which is not installed; the `official` fixture imports the
  package with a stub `torchvision` whose functions raise, and removes the
  stub from `sys.modules` right after. `ResizeLongestSide.get_preprocess_shape`,
  `apply_coords`, `apply_boxes` and `Sam.preprocess` / `Sam.postprocess_masks`
  run as the real official code; only `ResizeLongestSide.apply_image` (the
  torchvision resize of a PIL image, i.e. PIL bilinear) cannot run, so the
  image resize is checked against HF, which resizes with PIL the same way.

The real images come from `<repo>/../shared/data`; tests that need them are
skipped when that folder is absent.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import types
import zlib
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from simsam_jax import processing

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
_IMAGE_GLOBS = (
    "busi/Dataset_BUSI_with_GT/benign/*.png",
    "busi/Dataset_BUSI_with_GT/malignant/*.png",
    "busi/Dataset_BUSI_with_GT/normal/*.png",
    "cvc_clinicdb/Original/*.tif",
    "cvc_clinicdb/PNG/Original/*.png",
    "isic2016/ISBI2016_ISIC_Part1_Training_Data/*.jpg",
)


def _real_image_paths():
  if not DATA_DIR.is_dir():
    return []
  paths = []
  for pattern in _IMAGE_GLOBS:
    paths += [p for p in sorted(DATA_DIR.glob(pattern))
              if "_mask" not in p.name]
  return paths


REAL_IMAGE_PATHS = _real_image_paths()
_NO_DATA_REASON = f"real test images not found: {DATA_DIR} is absent or empty"


def _path_id(path):
  return "none" if path is None else str(path.relative_to(DATA_DIR))


@pytest.fixture(params=REAL_IMAGE_PATHS or [None], ids=_path_id)
def image_path(request):
  if request.param is None:
    pytest.skip(_NO_DATA_REASON)
  return request.param


@functools.lru_cache(maxsize=None)
def _load_cached(path):
  image = processing.load_image(path)
  image.setflags(write=False)
  return image


def _seed(path):
  return zlib.crc32(_path_id(path).encode())


@pytest.fixture(scope="module")
def hf_image_processor():
  transformers = pytest.importorskip("transformers")
  return transformers.SamImageProcessor()


@pytest.fixture(scope="module")
def hf_processor(hf_image_processor):
  transformers = pytest.importorskip("transformers")
  return transformers.SamProcessor(image_processor=hf_image_processor)


def _raise_missing_torchvision(*args, **kwargs):
  raise RuntimeError("torchvision is not installed (test stub)")


@pytest.fixture(scope="module")
def official():
  """Official `segment_anything` modules, imported with a torchvision stub."""
  if importlib.util.find_spec("segment_anything") is None:
    pytest.skip("segment_anything is not installed")
  has_torchvision = importlib.util.find_spec("torchvision") is not None
  modules_before = set(sys.modules)
  if not has_torchvision:
    stub_names = ("torchvision", "torchvision.transforms",
                  "torchvision.transforms.functional", "torchvision.ops",
                  "torchvision.ops.boxes")
    for name in stub_names:
      stub = types.ModuleType(name)
      stub.resize = stub.to_pil_image = _raise_missing_torchvision
      stub.batched_nms = stub.box_area = _raise_missing_torchvision
      sys.modules[name] = stub
  try:
    transforms = importlib.import_module("segment_anything.utils.transforms")
    sam_module = importlib.import_module("segment_anything.modeling.sam")
  finally:
    if not has_torchvision:
      # Nothing else in the session must see the stub (nor official modules
      # bound to it); the objects we hold stay alive.
      for name in set(sys.modules) - modules_before:
        del sys.modules[name]
      assert "torchvision" not in sys.modules
  return types.SimpleNamespace(ResizeLongestSide=transforms.ResizeLongestSide,
                               Sam=sam_module.Sam,
                               has_torchvision=has_torchvision)


def _official_sam_stub(image_size):
  """The attributes `Sam.preprocess` / `Sam.postprocess_masks` read."""
  return types.SimpleNamespace(
      image_encoder=types.SimpleNamespace(img_size=image_size),
      pixel_mean=torch.Tensor(processing.PIXEL_MEAN).view(-1, 1, 1),
      pixel_std=torch.Tensor(processing.PIXEL_STD).view(-1, 1, 1))


def _hf_original_and_resized(hf_outputs):
  original = tuple(int(v) for v in np.asarray(hf_outputs["original_sizes"])[0])
  resized = tuple(
      int(v) for v in np.asarray(hf_outputs["reshaped_input_sizes"])[0])
  return original, resized


# ----------------------------------------------------------------------------
# Against Hugging Face, on every real image.
# ----------------------------------------------------------------------------


def test_real_images_found():
  if not DATA_DIR.is_dir():
    pytest.skip(_NO_DATA_REASON)
  assert REAL_IMAGE_PATHS, f"no image matched {_IMAGE_GLOBS} under {DATA_DIR}"


def test_preprocess_matches_hf(image_path, hf_image_processor):
  image = _load_cached(image_path)
  pixels, info = processing.preprocess(image)
  hf = hf_image_processor(images=image, return_tensors="np")
  hf_pixels = np.asarray(hf["pixel_values"])[0].transpose(1, 2, 0)

  assert pixels.shape == hf_pixels.shape == (1024, 1024, 3)
  assert pixels.dtype == np.float32
  np.testing.assert_allclose(pixels, hf_pixels, rtol=0, atol=1e-5)
  original, resized = _hf_original_and_resized(hf)
  assert info.original_size == original == image.shape[:2]
  assert info.resized_size == resized
  assert info.image_size == 1024
  # Padding is exactly zero; HF pads with zero after normalising as well.
  assert not pixels[resized[0]:].any() and not pixels[:, resized[1]:].any()


def test_resize_matches_hf_exactly(image_path, hf_image_processor):
  # HF's resize step alone, on uint8 (no rescale / normalise / pad).
  image = _load_cached(image_path)
  hf = hf_image_processor(images=image, do_rescale=False, do_normalize=False,
                          do_pad=False, return_tensors="np")
  hf_resized = np.asarray(hf["pixel_values"])[0].transpose(1, 2, 0)
  resized = processing.resize_longest_side(image)
  assert resized.dtype == np.uint8
  np.testing.assert_array_equal(resized, hf_resized)


def test_coords_and_boxes_match_hf(image_path, hf_processor):
  image = _load_cached(image_path)
  height, width = image.shape[:2]
  rng = np.random.default_rng(_seed(image_path))
  points = np.concatenate([
      [[0.0, 0.0], [width, height], [width - 1, height - 1],
       [width / 2, height / 2]],
      rng.uniform(0, 1, (6, 2)) * [width, height],
  ])
  # Quarter-pixel boxes are exact in float32, the dtype HF casts boxes to
  # before scaling; so the float32 results must agree bit for bit.
  corners = np.round(rng.uniform(0, 1, (5, 2, 2)) * [width, height] * 4) / 4
  boxes = np.concatenate([[[0.0, 0.0, width, height]],
                          np.sort(corners, axis=1).reshape(5, 4)])
  hf = hf_processor(images=image, input_points=[points.tolist()],
                    input_boxes=[boxes.tolist()], return_tensors="np")
  original, resized = _hf_original_and_resized(hf)

  mapped_points = processing.apply_coords(points, original, resized)
  mapped_boxes = processing.apply_boxes(boxes, original, resized)
  assert mapped_points.dtype == mapped_boxes.dtype == np.float32
  hf_points = np.asarray(hf["input_points"]).reshape(points.shape)
  hf_boxes = np.asarray(hf["input_boxes"]).reshape(boxes.shape)
  np.testing.assert_array_equal(mapped_points, hf_points.astype(np.float32))
  np.testing.assert_array_equal(mapped_boxes, hf_boxes.astype(np.float32))
  np.testing.assert_array_equal(mapped_boxes[0], [0, 0, resized[1],
                                                  resized[0]])


def test_postprocess_matches_hf(image_path, hf_image_processor):
  image = _load_cached(image_path)
  info = processing.ImageInfo(
      image.shape[:2], processing.preprocess_shape(*image.shape[:2]))
  rng = np.random.default_rng(_seed(image_path))
  low_res = (4 * rng.standard_normal((1, 3, 256, 256))).astype(np.float32)

  with jax.default_matmul_precision("highest"):
    logits = np.asarray(processing.postprocess_logits(low_res, info))
    masks = np.asarray(processing.postprocess_masks(low_res, info))
  hf_logits = hf_image_processor.post_process_masks(
      [torch.from_numpy(low_res)], [info.original_size], [info.resized_size],
      binarize=False)[0].numpy()
  hf_masks = hf_image_processor.post_process_masks(
      [torch.from_numpy(low_res)], [info.original_size], [info.resized_size],
      binarize=True)[0].numpy()

  assert logits.shape == hf_logits.shape == (1, 3) + image.shape[:2]
  assert logits.dtype == np.float32 and masks.dtype == np.bool_
  np.testing.assert_allclose(logits, hf_logits, rtol=0, atol=1e-4)
  # Binary masks agree except where the logit is 0 up to float rounding.
  disagree = masks != hf_masks
  assert not (disagree & (np.abs(hf_logits) > 1e-4)).any()
  assert disagree.sum() <= 2, f"{disagree.sum()} mask pixels differ"


# ----------------------------------------------------------------------------
# Against the official segment_anything code.
# ----------------------------------------------------------------------------


def _sizes_to_check():
  rng = np.random.default_rng(0)
  sizes = [(1, 1), (1, 2), (2, 1), (1023, 1024), (1024, 1023), (1025, 1),
           (288, 384), (398, 273), (767, 1022), (1129, 1504), (704, 1057),
           (1, 3000), (3000, 1), (1, 2048), (2049, 1), (4000, 3)]
  sizes += [tuple(s) for s in rng.integers(1, 5000, (400, 2))]
  sizes += [tuple(s) for s in rng.integers(1, 300, (400, 2))]
  if REAL_IMAGE_PATHS:
    sizes += [_load_cached(p).shape[:2] for p in REAL_IMAGE_PATHS]
  return sizes


@pytest.mark.parametrize("long_side", [1024, 80, 64, 1])
def test_preprocess_shape_matches_official(official, long_side):
  for height, width in _sizes_to_check():
    expected = official.ResizeLongestSide.get_preprocess_shape(
        height, width, long_side)
    if 0 in expected:  # Deliberate deviation: an error instead of 0 pixels.
      with pytest.raises(ValueError, match="0 pixels"):
        processing.preprocess_shape(height, width, long_side)
    else:
      assert processing.preprocess_shape(height, width, long_side) == expected


@pytest.mark.parametrize("long_side", [1024, 80])
def test_coords_and_boxes_match_official(official, long_side):
  rng = np.random.default_rng(1)
  transform = official.ResizeLongestSide(long_side)
  for original in [(288, 384), (398, 273), (1129, 1504), (37, 91), (1, 7)]:
    resized = processing.preprocess_shape(*original, long_side)
    height, width = original
    points = rng.uniform(-0.1, 1.1, (3, 4, 2)) * [width, height]
    boxes = rng.uniform(0, 1, (5, 4)) * [width, height, width, height]
    # The official predictor casts the float64 result to a float32 tensor.
    expected_points = transform.apply_coords(points, original)
    expected_boxes = transform.apply_boxes(boxes, original)
    np.testing.assert_array_equal(
        processing.apply_coords(points, original, resized),
        expected_points.astype(np.float32))
    np.testing.assert_array_equal(
        processing.apply_boxes(boxes, original, resized),
        expected_boxes.astype(np.float32))
    # Leading shape is kept (the official apply_boxes flattens to (N, 4)).
    np.testing.assert_array_equal(
        processing.apply_boxes(boxes.reshape(5, 1, 4), original, resized),
        expected_boxes.astype(np.float32).reshape(5, 1, 4))
    # Integer coordinates are accepted.
    np.testing.assert_array_equal(
        processing.apply_coords(np.round(points).astype(np.int64), original,
                                resized),
        transform.apply_coords(np.round(points).astype(np.int64),
                               original).astype(np.float32))


def test_normalize_and_pad_matches_official_bit_exact(official):
  rng = np.random.default_rng(2)
  for image_size, (height, width) in [(1024, (1024, 702)), (80, (33, 80)),
                                      (80, (80, 80))]:
    resized = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    # As `SamPredictor.set_image`: uint8 HWC -> 1x3xHxW uint8 tensor.
    tensor = torch.as_tensor(resized).permute(2, 0, 1)[None]
    expected = official.Sam.preprocess(_official_sam_stub(image_size), tensor)
    pixels = processing.normalize_and_pad(resized, image_size)
    assert pixels.shape == (image_size, image_size, 3)
    np.testing.assert_array_equal(pixels,
                                  expected[0].permute(1, 2, 0).numpy())


# (image_size, original_size, leading shape of the low-res logits).
_POSTPROCESS_CASES = [
    (80, (37, 91), (2, 3)),      # resized (33, 80); upscaled at the end.
    (80, (200, 123), (1, 3)),    # resized (80, 49); shrunk at the end.
    (80, (80, 80), (1, 1)),      # no crop, identity final resize.
    (80, (1, 7), (1, 2)),        # resized (11, 80); 1-pixel-high output.
    (64, (333, 17), (1, 1)),     # resized (64, 3).
    (1024, (1500, 77), (1, 3)),  # resized (1024, 53).
    (1024, (768, 1024), (1, 1)),  # width unchanged by the final resize.
]


@pytest.mark.parametrize("image_size,original_size,leading_shape",
                         _POSTPROCESS_CASES,
                         ids=[f"S{s}-{h}x{w}" for s, (h, w), _ in
                              _POSTPROCESS_CASES])
def test_postprocess_matches_official(official, image_size, original_size,
                                      leading_shape):
  low_res_side = image_size // 4
  resized_size = processing.preprocess_shape(*original_size, image_size)
  info = processing.ImageInfo(original_size, resized_size, image_size)
  assert info.low_res_size == low_res_side
  rng = np.random.default_rng(image_size + original_size[0])
  low_res = (4 * rng.standard_normal(
      leading_shape + (low_res_side, low_res_side))).astype(np.float32)

  expected = official.Sam.postprocess_masks(
      _official_sam_stub(image_size), torch.from_numpy(low_res), resized_size,
      original_size).numpy()
  with jax.default_matmul_precision("highest"):
    logits = np.asarray(processing.postprocess_logits(low_res, info))
  assert logits.shape == expected.shape == leading_shape + original_size
  np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)
  same_as_upscale = processing.upscale_logits(low_res, image_size,
                                              resized_size, original_size)
  np.testing.assert_array_equal(logits, np.asarray(same_as_upscale))


def test_resize_matches_official_apply_image(official):
  if not official.has_torchvision:
    pytest.skip("torchvision is not installed: the official apply_image "
                "cannot run (the PIL bilinear resize is checked against HF)")
  if not REAL_IMAGE_PATHS:
    pytest.skip(_NO_DATA_REASON)
  for path in REAL_IMAGE_PATHS:
    image = _load_cached(path)
    np.testing.assert_array_equal(
        processing.resize_longest_side(image),
        official.ResizeLongestSide(1024).apply_image(np.array(image)),
        err_msg=str(path))


# ----------------------------------------------------------------------------
# Post-processing as a JAX function.
# ----------------------------------------------------------------------------


def test_postprocess_is_jittable_and_keeps_leading_axes():
  info = processing.ImageInfo((37, 91), (33, 80), 80)
  low_res = np.random.default_rng(3).standard_normal((2, 3, 20, 20))
  low_res = low_res.astype(np.float32)
  reference = np.asarray(processing.postprocess_logits(low_res, info))

  @jax.jit
  def masks_and_logits(x):
    return (processing.postprocess_masks(x, info),
            processing.postprocess_logits(x, info))

  masks, logits = masks_and_logits(low_res)
  np.testing.assert_allclose(np.asarray(logits), reference, rtol=0, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(masks), reference > 0)
  # Any number of leading axes, including none.
  single = processing.postprocess_logits(low_res[1, 2], info)
  np.testing.assert_allclose(np.asarray(single), reference[1, 2], rtol=0,
                             atol=1e-6)
  # ImageInfo is a valid static argument.
  jitted = jax.jit(processing.postprocess_logits, static_argnums=1)
  np.testing.assert_allclose(np.asarray(jitted(low_res, info)), reference,
                             rtol=0, atol=1e-6)


def test_resize_logits_to_matches_torch_interpolate():
  rng = np.random.default_rng(4)
  for in_size, out_size in [((20, 20), (80, 80)), ((33, 80), (37, 91)),
                            ((80, 49), (7, 123)), ((5, 5), (5, 5))]:
    logits = rng.standard_normal((2, 1) + in_size).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(logits), out_size,
                             mode="bilinear", align_corners=False).numpy()
    result = np.asarray(processing.resize_logits_to(logits, out_size))
    np.testing.assert_allclose(result, expected, rtol=0, atol=1e-5)


def test_image_info_validation():
  info = processing.ImageInfo(np.array([398, 273]), [1024, 702])
  assert info.original_size == (398, 273) and info.resized_size == (1024, 702)
  assert hash(info) == hash(processing.ImageInfo((398, 273), (1024, 702)))
  with pytest.raises(ValueError, match="does not fit"):
    processing.ImageInfo((10, 10), (90, 90), image_size=80)
  with pytest.raises(ValueError, match="positive"):
    processing.ImageInfo((0, 10), (8, 80), image_size=80)


# ----------------------------------------------------------------------------
# Input checks and grayscale.
# ----------------------------------------------------------------------------


def test_grayscale_is_replicated_to_rgb(hf_image_processor):
  rng = np.random.default_rng(5)
  gray = rng.integers(0, 256, (123, 77), dtype=np.uint8)
  rgb = np.repeat(gray[..., None], 3, axis=-1)
  expected_pixels, expected_info = processing.preprocess(rgb)
  for variant in (gray, gray[..., None]):
    pixels, info = processing.preprocess(variant)
    np.testing.assert_array_equal(pixels, expected_pixels)
    assert info == expected_info
  # HF converts a PIL 'L' image to RGB the same way.
  hf = hf_image_processor(images=Image.fromarray(gray), return_tensors="np")
  np.testing.assert_allclose(
      expected_pixels, np.asarray(hf["pixel_values"])[0].transpose(1, 2, 0),
      rtol=0, atol=1e-5)


@pytest.mark.parametrize("bad_image,match", [
    (np.zeros((8, 8, 3), np.float32), "uint8"),
    (np.zeros((8, 8, 3), np.uint16), "uint8"),
    (np.zeros((8, 8, 4), np.uint8), "shape"),
    (np.zeros((8, 8, 2), np.uint8), "shape"),
    (np.zeros((8,), np.uint8), "shape"),
    (np.zeros((2, 8, 8, 3), np.uint8), "shape"),
    (np.zeros((0, 8, 3), np.uint8), "empty"),
    ([[1, 2], [3, 4]], "numpy array"),
])
def test_bad_images_are_rejected(bad_image, match):
  with pytest.raises(ValueError, match=match):
    processing.resize_longest_side(bad_image)
  with pytest.raises(ValueError, match=match):
    processing.preprocess(bad_image)


def test_bad_coords_and_sizes_are_rejected():
  with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
    processing.apply_coords(np.zeros((3, 3)), (10, 10), (80, 80))
  with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
    processing.apply_boxes(np.zeros((3, 2)), (10, 10), (80, 80))
  with pytest.raises(ValueError, match="positive"):
    processing.preprocess_shape(0, 10)
  with pytest.raises(ValueError, match="does not fit"):
    processing.normalize_and_pad(np.zeros((81, 10, 3), np.uint8), 80)
  with pytest.raises(ValueError, match="does not fit"):
    processing.upscale_logits(np.zeros((20, 20)), 80, (81, 10), (5, 5))


# ----------------------------------------------------------------------------
# load_image.
# ----------------------------------------------------------------------------


def test_load_image_tiff_equals_png_copy():
  tiffs = sorted((DATA_DIR / "cvc_clinicdb" / "Original").glob("*.tif"))
  if not tiffs:
    pytest.skip(_NO_DATA_REASON)
  for tiff_path in tiffs:
    png_path = (DATA_DIR / "cvc_clinicdb" / "PNG" / "Original" /
                f"{tiff_path.stem}.png")
    tiff_image = processing.load_image(tiff_path)
    assert tiff_image.dtype == np.uint8 and tiff_image.shape[-1] == 3
    np.testing.assert_array_equal(tiff_image, processing.load_image(png_path))


def test_load_image_modes(tmp_path):
  rng = np.random.default_rng(6)
  rgba = rng.integers(0, 256, (9, 11, 4), dtype=np.uint8)
  cases = {
      "rgba.png": (Image.fromarray(rgba, "RGBA"), rgba[..., :3]),
      "gray.png": (Image.fromarray(rgba[..., 0], "L"),
                   np.repeat(rgba[..., :1], 3, axis=-1)),
      "gray_alpha.png": (Image.fromarray(rgba[..., :2].copy(), "LA"),
                         np.repeat(rgba[..., :1], 3, axis=-1)),
      "bilevel.png": (Image.fromarray(rgba[..., 0] > 127),
                      np.repeat((rgba[..., :1] > 127) * np.uint8(255), 3,
                                axis=-1)),
  }
  for name, (image, expected) in cases.items():
    image.save(tmp_path / name)
    np.testing.assert_array_equal(processing.load_image(tmp_path / name),
                                  expected, err_msg=name)
  palette = Image.fromarray(rgba[..., :3]).quantize(16)
  palette.save(tmp_path / "palette.png")
  np.testing.assert_array_equal(processing.load_image(tmp_path / "palette.png"),
                                np.asarray(palette.convert("RGB")))

  tifffile = pytest.importorskip("tifffile")
  tifffile.imwrite(tmp_path / "gray.tif", rgba[..., 0])
  tifffile.imwrite(tmp_path / "rgba.tiff", rgba, photometric="rgb")
  tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgba[..., :3], -1, 0),
                   photometric="rgb", planarconfig="separate")
  np.testing.assert_array_equal(processing.load_image(tmp_path / "gray.tif"),
                                cases["gray.png"][1])
  np.testing.assert_array_equal(processing.load_image(tmp_path / "rgba.tiff"),
                                rgba[..., :3])
  np.testing.assert_array_equal(processing.load_image(tmp_path / "planar.tif"),
                                rgba[..., :3])


def _assert_raises_naming(path, error_type):
  with pytest.raises(error_type) as raised:
    processing.load_image(path)
  assert str(path) in str(raised.value)
  return raised.value


def test_load_image_missing_file(tmp_path):
  _assert_raises_naming(tmp_path / "missing.png", FileNotFoundError)
  _assert_raises_naming(str(tmp_path / "missing.tif"), FileNotFoundError)
  _assert_raises_naming(tmp_path, ValueError)  # A folder.


def test_load_image_truncated_and_invalid_files(tmp_path):
  rng = np.random.default_rng(7)
  image = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
  Image.fromarray(image).save(tmp_path / "full.png")
  Image.fromarray(image).save(tmp_path / "full.jpg")
  data = (tmp_path / "full.png").read_bytes()
  (tmp_path / "truncated.png").write_bytes(data[:len(data) // 2])
  data = (tmp_path / "full.jpg").read_bytes()
  (tmp_path / "truncated.jpg").write_bytes(data[:len(data) // 2])
  (tmp_path / "text.png").write_text("this is not an image\n")
  (tmp_path / "text.tif").write_text("this is not an image\n")
  (tmp_path / "empty.png").write_bytes(b"")
  bad_files = ["truncated.png", "truncated.jpg", "text.png", "text.tif",
               "empty.png"]

  tifffile = pytest.importorskip("tifffile")
  tifffile.imwrite(tmp_path / "full.tif", image)  # Directory before pixels.
  data = (tmp_path / "full.tif").read_bytes()
  (tmp_path / "truncated_pixels.tif").write_bytes(data[:len(data) // 2])
  tiffs = sorted((DATA_DIR / "cvc_clinicdb" / "Original").glob("*.tif"))
  if tiffs:  # CVC-ClinicDB: pixels before the directory.
    data = tiffs[0].read_bytes()
    (tmp_path / "truncated_cvc.tif").write_bytes(data[:len(data) // 2])
    bad_files.append("truncated_cvc.tif")
  bad_files.append("truncated_pixels.tif")
  tifffile.imwrite(tmp_path / "deep.tif", image.astype(np.uint16))
  Image.fromarray(image[..., 0].astype(np.uint16) * 257).save(
      tmp_path / "deep.png")

  for name in bad_files:
    _assert_raises_naming(tmp_path / name, ValueError)
  # Deeper pixels are scaled by the default `minmax` intensity policy
  # (tests/test_intensity.py covers the policies).
  for name in ("deep.tif", "deep.png"):
    loaded = processing.read_image(tmp_path / name)
    assert loaded.intensity == "minmax" and loaded.dtype == "uint16"
    assert loaded.pixels.dtype == np.uint8 and loaded.pixels.max() == 255
