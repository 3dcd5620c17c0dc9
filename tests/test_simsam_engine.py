"""Tests of the compiled SimSAM engine (`simsam_jax.simsam.SimSam`).

A random `tiny` SAM (input side S = 160, low-res side M = 40) segments
synthetic phantoms of one odd, non-square size (61 x 83), so that every
engine compiles once per configuration: one image, from an embedding, the
staged path, a batch on one device, and the same batch on 4 forced host
devices in a subprocess (started at module set-up, so that it runs while the
in-process tests compile). The published-protocol geometry (S = 1024,
M = 256) is checked on the two-block `tiny_1024` preset.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import ndimage

from simsam_jax import processing, synthetic
from simsam_jax.modeling import build_sam, get_preset
from simsam_jax.simsam import SimSam, SimSamConfig, SimSamOutput, pairwise_iou

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = get_preset("tiny")
S, M = TINY.image_size, TINY.mask_input_size
HEIGHT, WIDTH = 61, 83  # odd, non-square
MODEL_SEED = 3
K = 7
NUM_IMAGES = 6  # the batch; 6 on 4 devices pads to 8
FIELDS = [f.name for f in dataclasses.fields(SimSamOutput)]
DISCRETE = ("chosen", "clicks", "labels")
MASK_LOGITS = {"mask": "low_res_logits", "sam_mask": "first_low_res_logits"}

SUBPROCESS_SCRIPT = """
import sys
import numpy as np
import jax
jax.config.update("jax_default_matmul_precision", "highest")
assert len(jax.devices()) == 4, jax.devices()
from simsam_jax import processing
from simsam_jax.modeling import build_sam, get_preset
from simsam_jax.simsam import SimSam, SimSamConfig
inp = np.load(sys.argv[1])
info = processing.ImageInfo(tuple(inp["original_size"]), tuple(inp["resized_size"]),
                            int(inp["image_size"]))
engine = SimSam(build_sam(get_preset("tiny"), int(inp["seed"])),
                SimSamConfig(k=int(inp["k"])))
out = engine.run_batch(inp["pixels"], inp["boxes"], info)
assert out.mask.shape[0] == inp["pixels"].shape[0], out.mask.shape
assert len(out.mask.sharding.device_set) == 4, out.mask.sharding
np.savez(sys.argv[2], num_devices=len(jax.devices()),
         **{name: np.asarray(value) for name, value in vars(out).items()})
"""


@dataclasses.dataclass
class Batch:
  pixels: np.ndarray  # (B, S, S, 3) float32
  boxes: np.ndarray  # (B, 4) float32
  masks: np.ndarray  # (B, H, W) bool
  info: processing.ImageInfo


@pytest.fixture(scope="module")
def batch() -> Batch:
  pixels, boxes, masks, infos = [], [], [], set()
  for seed in range(1, NUM_IMAGES + 1):
    image, mask, box = synthetic.phantom(HEIGHT, WIDTH, seed=seed)
    p, info = processing.preprocess(image, S)
    pixels.append(p)
    boxes.append(box)
    masks.append(mask)
    infos.add(info)
  assert len(infos) == 1
  return Batch(np.stack(pixels), np.asarray(boxes, np.float32), np.stack(masks), infos.pop())


@pytest.fixture(scope="module")
def four_devices(batch, tmp_path_factory):
  """Starts the 4-device subprocess at once; the test collects it.

  The subprocess runs on CPU; the comparison needs the in-process run on CPU
  too, so it is skipped on an accelerator backend.
  """
  if jax.default_backend() != "cpu":
    yield None
    return
  folder = tmp_path_factory.mktemp("four_devices")
  inputs, outputs = folder / "inputs.npz", folder / "outputs.npz"
  info = batch.info
  np.savez(inputs, pixels=batch.pixels, boxes=batch.boxes, seed=MODEL_SEED, k=K,
           original_size=info.original_size, resized_size=info.resized_size,
           image_size=info.image_size)
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      " --xla_force_host_platform_device_count=4").strip()
  env["JAX_PLATFORMS"] = "cpu"
  log = folder / "log.txt"
  with open(log, "w") as log_file:  # a file, not a pipe: never blocks the child
    proc = subprocess.Popen(
        [sys.executable, "-c", SUBPROCESS_SCRIPT, str(inputs), str(outputs)],
        cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
  yield proc, outputs, log
  if proc.poll() is None:
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module", autouse=True)
def _start_subprocess_early(four_devices):
  """Module set-up starts the subprocess before the first test compiles."""


@pytest.fixture(scope="module")
def model():
  return build_sam(TINY, MODEL_SEED)


@pytest.fixture(scope="module")
def engine(model) -> SimSam:
  return SimSam(model, SimSamConfig(k=K))


@pytest.fixture(scope="module")
def out(engine, batch) -> SimSamOutput:
  return engine.run(batch.pixels[0], batch.boxes[0], batch.info)


@pytest.fixture(scope="module")
def embedding(engine, batch):
  return engine.stages.encode(engine.state, jnp.asarray(batch.pixels[0]))


@pytest.fixture(scope="module")
def random_engine(model) -> SimSam:
  return SimSam(model, SimSamConfig(k=K, clicks="random", include_box_only_mask=True))


@pytest.fixture(scope="module")
def batch_out(engine, batch) -> SimSamOutput:
  return engine.run_batch(batch.pixels, batch.boxes, batch.info, devices=jax.devices()[:1])


def _np(output) -> dict:
  return {name: np.asarray(getattr(output, name)) for name in FIELDS}


def assert_outputs_equal(a: dict, b: dict, info: processing.ImageInfo, atol=1e-5,
                        where=""):
  """Discrete fields exactly, float fields within atol.

  The (H, W) masks are compared exactly except at pixels whose bilinear
  round-trip logit lies within 1e-5 of the threshold: there, float rounding
  of a differently compiled program (vmap, sharding) may flip the sign.
  """
  assert set(a) >= set(FIELDS) and set(b) >= set(FIELDS)
  for name in FIELDS:
    x, y = np.asarray(a[name]), np.asarray(b[name])
    assert x.shape == y.shape and x.dtype == y.dtype, (where, name, x.shape, y.shape)
    if name in MASK_LOGITS:
      logits = np.asarray(processing.upscale_logits(b[MASK_LOGITS[name]], info.image_size,
                                                    info.resized_size, info.original_size))
      sure = np.abs(logits) > 1e-5
      assert sure.mean() > 0.999, (where, name)
      np.testing.assert_array_equal(x[sure], y[sure], err_msg=f"{where} {name}")
    elif name in DISCRETE:
      np.testing.assert_array_equal(x, y, err_msg=f"{where} {name}")
    else:
      np.testing.assert_allclose(x, y, atol=atol, rtol=0, err_msg=f"{where} {name}")


def _index(output: dict, i: int) -> dict:
  return {name: output[name][i] for name in FIELDS}


def _check_shapes(output: SimSamOutput, k: int, num_candidates: int):
  want = {
      "mask": ((HEIGHT, WIDTH), jnp.bool_),
      "low_res_logits": ((M, M), jnp.float32),
      "chosen": ((), jnp.int32),
      "scores": ((num_candidates,), jnp.float32),
      "clicks": ((k, 2), jnp.int32),
      "labels": ((k,), jnp.int32),
      "candidate_logits": ((num_candidates, M, M), jnp.float32),
      "candidate_iou": ((num_candidates,), jnp.float32),
      "agreement": ((HEIGHT, WIDTH), jnp.float32),
      "confidence": ((), jnp.float32),
      "first_low_res_logits": ((M, M), jnp.float32),
      "first_iou": ((), jnp.float32),
      "sam_mask": ((HEIGHT, WIDTH), jnp.bool_),
  }
  assert set(want) == set(FIELDS)
  for name, (shape, dtype) in want.items():
    value = getattr(output, name)
    assert value.shape == shape and value.dtype == dtype, (name, value.shape, value.dtype)


# -- shapes and semantics --------------------------------------------------------


def test_output_shapes_k7_and_paper_semantics(out, batch):
  _check_shapes(out, K, K)
  o = _np(out)
  # Clicks in the image; labels = 1 - binary first prediction (eq. 3).
  assert (o["clicks"] >= 0).all()
  assert (o["clicks"][:, 0] < WIDTH).all() and (o["clicks"][:, 1] < HEIGHT).all()
  info = batch.info
  first = np.asarray(processing.upscale_logits(out.first_low_res_logits, S,
                                               info.resized_size, info.original_size))
  probs = 1 / (1 + np.exp(-first.astype(np.float64)))
  x, y = o["clicks"][:, 0], o["clicks"][:, 1]
  sure = np.abs(probs[y, x] - 0.5) > 1e-6
  np.testing.assert_array_equal(o["labels"][sure], 1 - (probs[y, x] > 0.5)[sure])
  err = 0.5 - np.abs(probs - 0.5)
  np.testing.assert_allclose(np.sort(err[y, x])[::-1], np.sort(err.reshape(-1))[::-1][:K],
                             atol=1e-5)
  # The paper's aggregation over the returned candidates.
  scores = np.asarray(pairwise_iou(out.candidate_logits > 0)).mean(1)
  np.testing.assert_allclose(o["scores"], scores, atol=1e-6)
  assert o["chosen"] == np.argmax(o["scores"])
  np.testing.assert_array_equal(o["low_res_logits"], o["candidate_logits"][o["chosen"]])
  # Masks: the bilinear round trip for a non-square image.
  final = np.asarray(processing.upscale_logits(out.low_res_logits, S, info.resized_size,
                                               info.original_size))
  sure = np.abs(final) > 1e-5
  np.testing.assert_array_equal(o["mask"][sure], (final > 0)[sure])
  sure = np.abs(first) > 1e-5
  np.testing.assert_array_equal(o["sam_mask"][sure], (first > 0)[sure])
  assert 0 <= o["agreement"].min() and o["agreement"].max() <= 1
  assert 0 <= o["confidence"] <= 1


def test_include_box_only_mask(random_engine, batch):
  o = random_engine.run(batch.pixels[0], batch.boxes[0], batch.info, key=jax.random.key(1))
  _check_shapes(o, K, K + 1)
  np.testing.assert_array_equal(np.asarray(o.candidate_logits[0]),
                                np.asarray(o.first_low_res_logits))
  assert float(o.candidate_iou[0]) == float(o.first_iou)
  scores = np.asarray(pairwise_iou(o.candidate_logits > 0)).mean(1)
  np.testing.assert_allclose(np.asarray(o.scores), scores, atol=1e-6)


# -- determinism -----------------------------------------------------------------


def test_determinism_bit_identical(engine, out, batch):
  again = engine.run(batch.pixels[0], batch.boxes[0], batch.info)
  # Same engine with the weights rebuilt from the same seed (no recompilation:
  # the state is a jit argument).
  rebuilt = copy.copy(engine)
  rebuilt.state = nnx.split(build_sam(TINY, MODEL_SEED))[1]
  third = rebuilt.run(batch.pixels[0], batch.boxes[0], batch.info)
  for other in (again, third):
    for name in FIELDS:
      np.testing.assert_array_equal(np.asarray(getattr(out, name)),
                                    np.asarray(getattr(other, name)), err_msg=name)


def test_random_clicks_seeded(random_engine, batch):
  args = (batch.pixels[0], batch.boxes[0], batch.info)
  a = random_engine.run(*args, key=jax.random.key(1))
  b = random_engine.run(*args, key=jax.random.key(1))
  c = random_engine.run(*args, key=jax.random.key(2))
  default = random_engine.run(*args)  # the config's seed
  seeded = random_engine.run(*args, key=jax.random.key(random_engine.config.seed))
  for name in FIELDS:
    np.testing.assert_array_equal(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)))
    np.testing.assert_array_equal(np.asarray(getattr(default, name)),
                                  np.asarray(getattr(seeded, name)))
  assert not np.array_equal(np.asarray(a.clicks), np.asarray(c.clicks))
  assert not np.array_equal(np.asarray(a.candidate_logits), np.asarray(c.candidate_logits))
  # Over the whole image, not only the box (paper: whole image).
  x0, y0, x1, y1 = batch.boxes[0]
  for o in (a, c, default):
    x, y = np.asarray(o.clicks).T
    assert ((x >= 0) & (x < WIDTH) & (y >= 0) & (y < HEIGHT)).all()
    assert not ((x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)).all()


# -- equivalent entry points -----------------------------------------------------


def test_run_from_embedding_equals_run(engine, out, embedding, batch):
  g = TINY.image_embedding_size
  assert embedding.shape == (g, g, TINY.prompt_embed_dim)
  o = engine.run_from_embedding(embedding, batch.boxes[0], batch.info)
  assert_outputs_equal(_np(o), _np(out), batch.info, where="from_embedding")


def test_staged_equals_run(engine, out, embedding, batch):
  st, state, info = engine.stages, engine.state, batch.info
  box = jnp.asarray(batch.boxes[0], jnp.float32)
  first_low, first_iou = st.first(state, embedding, box, info)
  clicks, labels, cand, iou = st.simulate_and_decode(state, embedding, box, first_low,
                                                     engine.default_key(), None, info)
  staged = st.aggregate(cand, iou, first_low, first_iou, clicks, labels, info)
  mask, chosen, scores, confidence = staged.mask, staged.chosen, staged.scores, staged.confidence
  np.testing.assert_allclose(np.asarray(staged.agreement), np.asarray(out.agreement), atol=1e-5)
  np.testing.assert_allclose(np.asarray(staged.low_res_logits), np.asarray(out.low_res_logits),
                             atol=1e-5)
  np.testing.assert_allclose(np.asarray(first_low), np.asarray(out.first_low_res_logits),
                             atol=1e-5)
  np.testing.assert_allclose(float(first_iou), float(out.first_iou), atol=1e-5)
  np.testing.assert_array_equal(np.asarray(clicks), np.asarray(out.clicks))
  np.testing.assert_array_equal(np.asarray(labels), np.asarray(out.labels))
  np.testing.assert_allclose(np.asarray(cand), np.asarray(out.candidate_logits), atol=1e-5)
  np.testing.assert_allclose(np.asarray(iou), np.asarray(out.candidate_iou), atol=1e-5)
  assert int(chosen) == int(out.chosen)
  np.testing.assert_allclose(np.asarray(scores), np.asarray(out.scores), atol=1e-5)
  np.testing.assert_allclose(float(confidence), float(out.confidence), atol=1e-5)
  staged = {name: np.asarray(getattr(out, name)) for name in FIELDS}
  staged["mask"] = np.asarray(mask)
  assert_outputs_equal(staged, _np(out), info, where="staged")


def test_batch_equals_per_image(engine, batch, batch_out):
  got = _np(batch_out)
  for name in FIELDS:
    assert got[name].shape[0] == NUM_IMAGES, name
  for i in range(NUM_IMAGES):
    single = engine.run(batch.pixels[i], batch.boxes[i], batch.info)
    assert_outputs_equal(_index(got, i), _np(single), batch.info, where=f"image {i}")
  # Different images really give different answers.
  assert not np.array_equal(got["clicks"][0], got["clicks"][1])
  assert not np.array_equal(got["mask"][0], got["mask"][2])


def test_replicated_state_is_kept_until_the_state_changes(engine):
  from simsam_jax.simsam.engine import StateReplicas  # pylint: disable=import-outside-toplevel
  from jax.sharding import Mesh  # pylint: disable=import-outside-toplevel
  replicas = StateReplicas()
  mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
  first = replicas.get(engine.state, mesh)
  assert replicas.get(engine.state, mesh) is first  # same state object: no new copy
  new_state = jax.tree.map(lambda x: x + 1, engine.state)  # new weights: copied again
  renewed = replicas.get(new_state, mesh)
  assert renewed is not first
  leaf = lambda tree: np.asarray(jax.tree.leaves(tree)[0])
  np.testing.assert_array_equal(leaf(renewed), leaf(engine.state) + 1)


def test_batch_on_four_devices_equals_one_device(four_devices, batch, batch_out):
  if four_devices is None:
    pytest.skip("compares 4 forced host (CPU) devices with an in-process CPU run; "
                f"the default backend here is {jax.default_backend()}")
  proc, outputs, log = four_devices
  try:
    proc.wait(timeout=300)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()
    pytest.fail(f"4-device subprocess timed out:\n{log.read_text()[-3000:]}")
  assert proc.returncode == 0, log.read_text()[-3000:]
  with np.load(outputs) as f:
    four = {name: f[name] for name in f.files}
  assert int(four["num_devices"]) == 4
  one = _np(batch_out)
  for name in FIELDS:
    assert four[name].shape[0] == NUM_IMAGES, name
  for i in range(NUM_IMAGES):
    assert_outputs_equal(_index(four, i), _index(one, i), batch.info,
                         where=f"4 devices vs 1, image {i}")


# -- oracle and input checks -----------------------------------------------------


def test_oracle_k1_on_phantom(model, embedding, batch):
  """K = 1 output shapes, and the oracle click on the phantom with its GT.

  (One compilation serves both: `run_from_embedding` returns the same
  `SimSamOutput` as `run`.)
  """
  oracle = SimSam(model, SimSamConfig(k=1, clicks="oracle"))
  gt = batch.masks[0]
  o = oracle.run_from_embedding(embedding, batch.boxes[0], batch.info, ground_truth=gt)
  _check_shapes(o, 1, 1)
  assert int(o.chosen) == 0 and float(o.confidence) == 1.0
  np.testing.assert_array_equal(np.asarray(o.low_res_logits),
                                np.asarray(o.candidate_logits[0]))
  np.testing.assert_array_equal(np.asarray(o.scores), [1.0])
  # The click: the most interior pixel of the larger error region (scipy EDT
  # of the error mask padded by one pixel), positive for a false negative.
  pred = np.asarray(o.sam_mask)
  fn = ndimage.distance_transform_edt(np.pad(gt & ~pred, 1))[1:-1, 1:-1]
  fp = ndimage.distance_transform_edt(np.pad(pred & ~gt, 1))[1:-1, 1:-1]
  assert max(fn.max(), fp.max()) > 1  # a random model makes errors
  positive = fn.max() > fp.max()
  dist = fn if positive else fp
  (x, y), = np.asarray(o.clicks)
  assert int(o.labels[0]) == int(positive)
  np.testing.assert_allclose(dist[y, x], dist.max(), atol=1e-4)


def _pixels(batch):
  return batch.pixels[0]


@pytest.mark.parametrize("box,message", [
    ((0, 0, WIDTH + 1, HEIGHT), "outside"),
    ((-1, 0, 10, 10), "outside"),
    ((20, 5, 10, 30), "x1 < x0"),
    ((5, 30, 20, 10), "y1 < y0"),
    ((7, 7, 7, 7), "empty"),
    ((0, 0, 1, float("nan")), "finite"),
    ((0, 0, 1), "4 finite numbers"),
])
def test_check_bad_box(engine, batch, box, message):
  with pytest.raises(ValueError, match=message):
    engine.run(_pixels(batch), box, batch.info)


def test_check_errors(model, engine, batch):
  box, info = batch.boxes[0], batch.info
  oracle = SimSam(model, SimSamConfig(k=3, clicks="oracle"))
  with pytest.raises(ValueError, match="oracle.*ground-truth"):
    oracle.run(_pixels(batch), box, info)
  with pytest.raises(ValueError, match="ground truth has shape"):
    engine.run(_pixels(batch), box, info, ground_truth=np.zeros((HEIGHT + 1, WIDTH), bool))
  with pytest.raises(ValueError, match="ground truth has shape"):
    oracle.run_from_embedding(jnp.zeros((1, 1, 1)), box, info,
                              ground_truth=np.zeros((WIDTH, HEIGHT), bool))
  small = processing.ImageInfo((2, 3), (107, S), S)  # 6 pixels < K = 7
  with pytest.raises(ValueError, match=r"k=7 exceeds the number of pixels \(6\)"):
    engine.run(_pixels(batch), (0, 0, 2, 1), small)
  wrong = processing.ImageInfo((HEIGHT, WIDTH), (HEIGHT, WIDTH), 128)
  with pytest.raises(ValueError, match="preprocessed for 128"):
    engine.run(_pixels(batch), box, wrong)
  boxes = batch.boxes[:3].copy()
  boxes[2] = (5, 5, 5, 5)
  with pytest.raises(ValueError, match="empty"):
    engine.run_batch(batch.pixels[:3], boxes, info)
  with pytest.raises(ValueError, match="k must be a positive integer"):
    SimSam(model, SimSamConfig(k=0))


# -- the published-protocol geometry (S = 1024, M = 256) -------------------------


@pytest.fixture(scope="module")
def engine_1024():
  return SimSam(build_sam(get_preset("tiny_1024"), 5), SimSamConfig(k=2))


def test_published_geometry_256_square(engine_1024):
  image, _, box = synthetic.phantom(256, 256, seed=4)
  pixels, info = processing.preprocess(image, 1024)
  assert info.resized_size == (1024, 1024)
  o = engine_1024.run(pixels, box, info)
  assert o.low_res_logits.shape == (256, 256) and o.mask.shape == (256, 256)
  # Raw low-res masks line up pixel-for-pixel with the 256 x 256 image.
  np.testing.assert_array_equal(np.asarray(o.mask), np.asarray(o.low_res_logits > 0))
  np.testing.assert_array_equal(np.asarray(o.sam_mask),
                                np.asarray(o.first_low_res_logits > 0))
  assert 0 < np.asarray(o.mask).mean() < 1


def test_published_geometry_non_square(engine_1024):
  image, _, box = synthetic.phantom(96, 128, seed=4)
  pixels, info = processing.preprocess(image, 1024)
  assert info.resized_size == (768, 1024)
  o = engine_1024.run(pixels, box, info)
  assert o.low_res_logits.shape == (256, 256) and o.mask.shape == (96, 128)
  for mask, low in ((o.mask, o.low_res_logits), (o.sam_mask, o.first_low_res_logits)):
    up = np.asarray(processing.upscale_logits(low, 1024, info.resized_size,
                                              info.original_size))
    sure = np.abs(up) > 1e-5  # away from the threshold, where jit fusion may round
    assert sure.mean() > 0.99
    np.testing.assert_array_equal(np.asarray(mask)[sure], (up > 0)[sure])
