"""`simsam_jax.Predictor` against the official `SamPredictor`, and its contract.

Reference: `segment_anything.SamPredictor` (set_image, predict) over the
official PyTorch SAM holding the same random weights as ours
(`torch_reference`: every tensor randomised, hypernetwork outputs scaled, the
single-mask output balanced on the test image so masks are two-signed). Ours
loads those weights straight from the official `.pth` (converted in memory by
the checkpoint resolver). The official predictor's resize goes through
torchvision, which is not installed here: a two-function stand-in does what
torchvision does for a numpy uint8 image (`to_pil_image`, then PIL bilinear
`resize`), installed only while `segment_anything.predictor` is imported.

Also: compiled functions are reused over 10 calls of the same shapes
(counting XLA compilations), `predict` before `set_image` is refused,
`Predictor` and `segment` refuse the same bad inputs with the same messages,
`simsam` equals the `segment` command's SimSAM, the batched entry points equal
the one-image ones, and the atomic writer honours the umask.
"""

from __future__ import annotations

import os
import sys
import types

import numpy as np
import pytest
import torch
from jax import monitoring
from PIL import Image

import torch_reference as tr
from simsam_jax import Predictor, fileio, predictor, processing, segment, synthetic
from simsam_jax.checkpoint.resolve import describe_checkpoint
from simsam_jax.modeling import get_preset

IMAGE_SPEC = "synthetic:3:120x150"  # (H, W) = (120, 150): not square.


def _official_predictor_class():
  """`segment_anything.SamPredictor`, imported with a torchvision stand-in."""
  tr.import_official_modeling()
  if "segment_anything.predictor" in sys.modules:
    return sys.modules["segment_anything.predictor"].SamPredictor
  functional = types.ModuleType("torchvision.transforms.functional")
  # torchvision's resize of a PIL image: `image.resize((w, h), BILINEAR)`.
  functional.resize = lambda image, size: image.resize(
      (int(size[1]), int(size[0])), Image.BILINEAR)
  functional.to_pil_image = Image.fromarray
  names = ("torchvision", "torchvision.transforms",
           "torchvision.transforms.functional")
  added = [name for name in names if name not in sys.modules]
  for name in added:
    sys.modules[name] = (functional if name.endswith("functional")
                         else types.ModuleType(name))
  try:
    import segment_anything.predictor as official  # pylint: disable=import-outside-toplevel
  finally:
    for name in added:
      del sys.modules[name]
  return official.SamPredictor


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
  """(official SamPredictor with the image set, our Predictor, image, box)."""
  config = get_preset("tiny")
  image, _, box = synthetic.parse_image_spec(IMAGE_SPEC)
  box = np.asarray(box, np.float64)
  pixels, info = processing.preprocess(image, config.image_size)
  model_box = processing.apply_boxes(box[None], info.original_size, info.resized_size)
  official = tr.randomize_(tr.official_sam(config), seed=5)
  tr.balance_single_mask_(official, [np.moveaxis(pixels, -1, 0)[None]],
                          [model_box[0].astype(np.float32)])
  path = tr.save_official_pth(official, str(tmp_path_factory.mktemp("pth") / "sam.pth"))
  reference = _official_predictor_class()(official)
  reference.set_image(image)
  ours = Predictor.load(path)
  ours.set_image(image)
  return reference, ours, image, box


def _reference_predict(reference, **prompts):
  with torch.no_grad():
    return reference.predict(**prompts)


@pytest.mark.parametrize("multimask", [False, True])
def test_predict_matches_sam_predictor(pair, multimask):
  reference, ours, image, box = pair
  point = np.array([[box[0] + 0.6 * (box[2] - box[0]), box[1] + 0.4 * (box[3] - box[1])],
                    [5.0, 7.0]])
  labels = np.array([1, 0])
  for prompts in ({"box": box}, {"box": box, "points": point, "point_labels": labels},
                  {"points": point, "point_labels": labels}):
    ref_masks, ref_iou, ref_low = _reference_predict(
        reference, box=prompts.get("box"), point_coords=prompts.get("points"),
        point_labels=prompts.get("point_labels"), multimask_output=multimask)
    masks, iou, low = ours.predict(**prompts, multimask=multimask)
    assert masks.shape == ref_masks.shape == (3 if multimask else 1,) + image.shape[:2]
    assert masks.dtype == bool and low.shape == ref_low.shape
    np.testing.assert_allclose(low, ref_low, atol=2e-3 * np.abs(ref_low).max())
    np.testing.assert_allclose(iou, ref_iou, atol=1e-4)
    assert int(np.argmax(iou)) == int(np.argmax(ref_iou))  # the decision
    agreement = (masks == ref_masks).mean()
    assert agreement > 0.995, (prompts.keys(), agreement)
    if not multimask and "box" in prompts:
      assert 0.05 < masks.mean() < 0.95, masks.mean()  # decisive fixture


def test_mask_input_round_trip(pair):
  """A previous call's low-res logits as `mask_input`, as with SamPredictor."""
  reference, ours, _, box = pair
  _, _, ref_low = _reference_predict(reference, box=box, multimask_output=False)
  ref_masks, _, _ = _reference_predict(reference, box=box, mask_input=ref_low,
                                       multimask_output=False)
  low = ours.predict(box=box).low_res_logits
  masks = ours.predict(box=box, mask_input=low).masks
  assert (masks == ref_masks).mean() > 0.995


# An XLA compilation, or a program taken from the persistent compilation cache
# instead of compiling it (conftest.py turns the cache on for the run).
COMPILE_EVENTS = ("/jax/core/compile/backend_compile_duration",
                  "/jax/compilation_cache/cache_retrieval_time_sec")


def _count_compilations():
  events = []
  monitoring.register_event_duration_secs_listener(
      lambda event, duration, **kw: events.append(event) if event in COMPILE_EVENTS else None)
  return events


def test_compiled_once_over_ten_calls():
  ours = Predictor.load("random:tiny")
  image, _, box = synthetic.parse_image_spec(IMAGE_SPEC)
  ours.set_image(image)
  ours.predict(box=box)
  ours.simsam(box, k=4)
  events = _count_compilations()
  rng = np.random.default_rng(0)
  for _ in range(10):
    x0, y0 = rng.uniform(0, 60, 2)
    moved = [x0, y0, x0 + rng.uniform(10, 80), y0 + rng.uniform(10, 50)]
    ours.set_image(np.ascontiguousarray(image[:, ::-1]))  # another image, same size
    ours.predict(box=moved)
    ours.simsam(moved, k=4)
  assert len(events) == 0, events


def test_predict_before_set_image_is_refused():
  ours = Predictor.load("random:tiny")
  with pytest.raises(predictor.PredictorError, match="set_image"):
    ours.predict(box=[1, 1, 5, 5])
  with pytest.raises(predictor.PredictorError, match="set_image"):
    ours.simsam([1, 1, 5, 5])


# (segment keyword arguments, Predictor call, the message both give).
BAD_INPUTS = [
    ({"method": "sam", "box": "1,1,500,5"}, ("predict", {"box": [1, 1, 500, 5]}),
     "lies outside the 150x120"),
    ({"method": "sam", "box": "9,1,5,5"}, ("predict", {"box": [9, 1, 5, 5]}),
     "needs x0 <= x1"),
    ({"method": "sam", "points": ["3,4,2"]},
     ("predict", {"points": [[3, 4]], "point_labels": [2]}), "label must be 1"),
    ({"box": "5,5,5,40"}, ("simsam", {"box": [5, 5, 5, 40]}), "is empty"),
    ({"box": "1,1,50,50", "k": 0}, ("simsam", {"box": [1, 1, 50, 50], "k": 0}),
     "--k=0"),
    ({"box": "1,1,50,50", "clicks": "nope"},
     ("simsam", {"box": [1, 1, 50, 50], "clicks": "nope"}), "unknown"),
    ({"box": "1,1,50,50", "seed": -1}, ("simsam", {"box": [1, 1, 50, 50], "seed": -1}),
     "--seed=-1"),
]


@pytest.mark.parametrize("flags,call,message", BAD_INPUTS)
def test_same_refusals_as_segment(tmp_path, flags, call, message):
  image = str(tmp_path / "image.png")
  Image.fromarray(synthetic.parse_image_spec(IMAGE_SPEC)[0]).save(image)
  with pytest.raises(segment.SegmentError) as from_cli:
    segment.segment(checkpoint="random:tiny", image=image,
                    out=str(tmp_path / "mask.png"), **flags)
  ours = Predictor.load("random:tiny")
  ours.set_image(image)
  with pytest.raises(predictor.PredictorError) as from_api:
    getattr(ours, call[0])(**call[1])
  assert message in str(from_cli.value)
  assert str(from_api.value) == str(from_cli.value)
  assert not (tmp_path / "mask.png").exists()  # nothing written


@pytest.mark.parametrize("kwargs,message", [
    ({"spec": "random:vit_z"}, "--checkpoint='random:vit_z'"),
    ({"spec": "no/such/folder"}, "checkpoint folder not found"),
    ({"spec": "random:tiny", "precision": "fp16"}, "--precision='fp16'"),
    ({"spec": "random:tiny", "profile": "nope"}, "--profile='nope'"),
])
def test_load_refusals(kwargs, message):
  with pytest.raises(predictor.PredictorError, match=message.replace("(", r"\(")):
    Predictor.load(**kwargs)


def test_simsam_equals_segment_command(tmp_path):
  """The cached-embedding SimSAM equals `segment --method=simsam`'s mask."""
  ours = Predictor.load("random:tiny")
  image, _, box = synthetic.parse_image_spec(IMAGE_SPEC)
  ours.set_image(IMAGE_SPEC)
  output = ours.simsam(box, k=5)
  out = tmp_path / "mask.png"
  metadata = segment.segment(checkpoint="random:tiny", image=IMAGE_SPEC, out=str(out),
                             k=5, sam=ours, save_debug=str(tmp_path / "d.npz"))
  written = np.asarray(Image.open(out)) > 0
  np.testing.assert_array_equal(output.mask, written)
  debug = np.load(tmp_path / "d.npz")
  np.testing.assert_array_equal(output.clicks, debug["clicks"])
  np.testing.assert_array_equal(output.labels, debug["labels"])
  assert int(output.chosen) == metadata["chosen_index"]
  assert output.mask.shape == image.shape[:2]


def test_batches_equal_single_images():
  ours = Predictor.load("random:tiny")
  specs = [IMAGE_SPEC, "synthetic:4:120x150"]
  images, boxes = [], []
  for spec in specs:
    image, _, box = synthetic.parse_image_spec(spec)
    images.append(image)
    boxes.append(list(box))
  batched = ours.predict_batch(images, boxes=boxes)
  simsam_batched = ours.simsam_batch(images, boxes, k=4)
  for image, box, got, got_simsam in zip(images, boxes, batched, simsam_batched):
    ours.set_image(image)
    single = ours.predict(box=box)
    np.testing.assert_allclose(got.low_res_logits, single.low_res_logits, atol=1e-4)
    assert (got.masks == single.masks).mean() > 0.999
    single_simsam = ours.simsam(box, k=4)
    np.testing.assert_array_equal(got_simsam.clicks, single_simsam.clicks)
    assert int(got_simsam.chosen) == int(single_simsam.chosen)


def test_provenance_is_one_dict(tmp_path):
  """The launchers' and segment's checkpoint descriptions share their keys."""
  from simsam_jax import workdir  # pylint: disable=import-outside-toplevel
  _, launcher = workdir.load_sam_model("random:tiny:3")
  cli = describe_checkpoint("random:tiny:3")
  assert set(launcher) == set(cli) | {"architecture"}
  assert launcher["source_sha256"] is None and "sha256" not in launcher
  assert (launcher["preset"], launcher["seed"]) == ("tiny", 3)


@pytest.mark.parametrize("writer", ["one", "several"])
def test_atomic_writer_honours_umask(tmp_path, writer):
  old = os.umask(0o022)
  try:
    path = str(tmp_path / "sub" / "results.json")
    if writer == "one":
      fileio.write_atomic(path, "{}")
    else:
      fileio.write_files_atomically({path: b"{}", str(tmp_path / "t.md"): b"x"})
  finally:
    os.umask(old)
  assert os.stat(path).st_mode & 0o777 == 0o644
  assert sorted(os.listdir(tmp_path / "sub")) == ["results.json"]  # no temporaries


@pytest.mark.parametrize("planar", [False, True])
def test_one_tiff_decoder_for_every_reader(tmp_path, planar):
  """A 3-sample TIFF (contiguous or planar storage) reads the same through
  the `--image` reader, the dataset reader (file and zip member) and the
  `--ground_truth` reader: one decoder (`processing.decode_tiff`)."""
  import tifffile  # pylint: disable=import-outside-toplevel
  import zipfile  # pylint: disable=import-outside-toplevel
  from simsam_jax import inputs  # pylint: disable=import-outside-toplevel
  from simsam_jax.data import common  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(1)
  rgb = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
  rgb[0, 0] = 0  # some background for the mask reader
  path = tmp_path / "image.tif"
  if planar:
    tifffile.imwrite(path, np.moveaxis(rgb, -1, 0), planarconfig="separate",
                     photometric="rgb")
  else:
    tifffile.imwrite(path, rgb, photometric="rgb")
  np.testing.assert_array_equal(processing.read_image(str(path)).pixels, rgb)
  ref = common.file_ref(tmp_path, path)
  np.testing.assert_array_equal(common.read_image(ref), rgb)
  assert common.read_size(ref) == (5, 7)
  with zipfile.ZipFile(tmp_path / "a.zip", "w") as archive:
    archive.write(path, "inner/image.tif")
  member = common.FileRef(rel="a.zip/inner/image.tif", path=tmp_path / "a.zip",
                          member="inner/image.tif")
  np.testing.assert_array_equal(common.read_image(member), rgb)
  luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
  np.testing.assert_array_equal(inputs.load_ground_truth(str(path), (5, 7)), luma > 0)


def test_raw_sources_convert_in_memory(tmp_path):
  """`.pth`, Hugging Face folder, bare `model.safetensors` and the converted
  folder give one model (same logits) and one provenance layout."""
  from simsam_jax.checkpoint import convert_checkpoint  # pylint: disable=import-outside-toplevel
  official, hf = tr.paired_models(get_preset("tiny"), seed=3)
  pth = tr.save_official_pth(official, str(tmp_path / "sam.pth"))
  folder = tr.save_hf_folder(hf, str(tmp_path / "hf"))
  converted = str(tmp_path / "converted")
  convert_checkpoint(pth, converted)
  image, _, box = synthetic.parse_image_spec(IMAGE_SPEC)
  results = {}
  for name, spec in (("pth", pth), ("hf_folder", folder),
                     ("safetensors", os.path.join(folder, "model.safetensors")),
                     ("converted", converted)):
    ours = Predictor.load(spec)
    ours.set_image(image)
    results[name] = ours.predict(box=box).low_res_logits
    description = ours.description
    assert description["random_weights"] is False and description["architecture"] == "tiny"
    assert description["source_sha256"] and description["source_format"], description
  for name, logits in results.items():
    np.testing.assert_allclose(logits, results["converted"], atol=1e-4, err_msg=name)


_SHARDED = r"""
import json
import jax
import numpy as np
from simsam_jax import Predictor, synthetic

assert jax.local_device_count() == 4, jax.devices()
ours = Predictor.load("random:tiny")
images, boxes = zip(*[synthetic.parse_image_spec(f"synthetic:{i}:64x80")[::2] for i in range(3)])
batched = ours.predict_batch(images, boxes=boxes)
simsam = ours.simsam_batch(images, boxes, k=3)
same = []
for image, box, got, got_simsam in zip(images, boxes, batched, simsam):
  ours.set_image(image)
  single = ours.predict(box=box)
  one = ours.simsam(box, k=3)
  same.append([bool(np.array_equal(got.masks, single.masks)),
               bool(np.array_equal(got_simsam.mask, one.mask)),
               int(got_simsam.chosen) == int(one.chosen)])
# The weights were put on the 4 devices once; a second batch reuses them.
replicated = ours._replicas._replicated
again = ours.predict_batch(images, boxes=boxes)
reused = (ours._replicas._replicated is replicated
          and all(len(x.sharding.device_set) == 4 for x in jax.tree.leaves(replicated))
          and all(np.array_equal(a.masks, b.masks) for a, b in zip(again, batched)))
print("RESULT " + json.dumps(same + [reused]))
"""


def test_batches_sharded_over_four_devices():
  """3 images over 4 (forced host) devices, one image per device: each row
  equals the one-image call (the padding image is dropped); a second batch
  reuses the weights already replicated on the 4 devices."""
  import json  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  repo = pathlib.Path(__file__).resolve().parents[1]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(repo),
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  done = subprocess.run([sys.executable, "-c", _SHARDED], cwd=repo, env=env,
                        capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  line = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")][-1]
  assert json.loads(line[len("RESULT "):]) == [[True, True, True]] * 3 + [True]
