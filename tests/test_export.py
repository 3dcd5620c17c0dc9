"""`python -m simsam_jax.export` and `simsam_jax.export.load`.

A random `tiny` SAM, scaled and balanced so that its masks are mixed
(`decisive.decisive_`), is saved as a checkpoint and exported by the CLI for
CPU, CUDA and TPU at once; the exported program runs in a subprocess that
never imports the model code, and its outputs equal, bit for bit, those of
the same program run live and those of the library's SimSAM engine on
host-preprocessed pixels. The in-program resize is checked against Pillow.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from simsam_jax import export, processing, synthetic
from simsam_jax.checkpoint import load_model
from simsam_jax.checkpoint.store import save_checkpoint
from simsam_jax.modeling import build_sam, get_preset
from simsam_jax.simsam import SimSam, SimSamConfig

import decisive

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 61, 83  # odd, non-square
K = 5
SEED = 3


@pytest.mark.parametrize("size,long_side", [((61, 83), 160), ((300, 200), 160),
                                            ((96, 128), 1024), ((37, 500), 160)])
def test_resize_like_pil_is_pillow(size, long_side):
  image = np.random.default_rng(sum(size)).integers(0, 256, size + (3,), dtype=np.uint8)
  expected = processing.resize_longest_side(image, long_side)  # PIL
  got = jax.jit(lambda x: export.resize_like_pil(x, expected.shape[:2]))(image)
  np.testing.assert_array_equal(np.asarray(got), expected)


@pytest.fixture(scope="module")
def phantom():
  image, truth, box = synthetic.phantom(H, W, seed=1)
  return image, np.asarray(box, np.float32)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, phantom):
  image, box = phantom
  config = get_preset("tiny")
  model = build_sam(config, SEED)
  pixels, info = processing.preprocess(image, config.image_size)
  box_model = processing.apply_boxes(box[None], info.original_size, info.resized_size)[0]
  decisive.decisive_(model, pixels, box_model)
  dst = str(tmp_path_factory.mktemp("export") / "ckpt")
  save_checkpoint(dst, nnx.state(model), config, {"format": "random", "seed": SEED})
  return dst


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("export") / "simsam.jaxexport")
  run = subprocess.run(
      [sys.executable, "-m", "simsam_jax.export", f"--checkpoint={checkpoint}",
       "--method=simsam", f"--k={K}", f"--image_size={H},{W}", f"--out={out}"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr
  assert "cpu, cuda, tpu" in run.stdout
  return out


@pytest.fixture(scope="module")
def library(checkpoint, phantom):
  """The library's SimSAM engine on host-preprocessed pixels (PIL resize)."""
  image, box = phantom
  engine = SimSam(load_model(checkpoint), SimSamConfig(k=K))
  return jax.device_get(engine.segment(image, box))


def test_exported_program_runs_without_the_model_code(exported, phantom, library, tmp_path):
  image, box = phantom
  np.save(tmp_path / "image.npy", image)
  np.save(tmp_path / "box.npy", box)
  code = f"""
import sys, numpy as np
from simsam_jax import export
segment = export.load({exported!r})
out = segment(np.load({str(tmp_path / 'image.npy')!r}), np.load({str(tmp_path / 'box.npy')!r}))
loaded = sorted(m for m in sys.modules if m.startswith("simsam_jax."))
assert not any(m.startswith(("simsam_jax.modeling", "simsam_jax.simsam", "simsam_jax.checkpoint"))
               for m in loaded), loaded
print(sorted(segment.exported.platforms))
np.savez({str(tmp_path / 'out.npz')!r}, **{{k: np.asarray(v) for k, v in out.items()}})
"""
  run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                       text=True, timeout=600)
  assert run.returncode == 0, run.stderr
  assert run.stdout.strip() == "['cpu', 'cuda', 'tpu']"
  out = dict(np.load(tmp_path / "out.npz"))
  assert out["mask"].shape == (H, W) and out["mask"].dtype == bool
  assert out["scores"].shape == (K,) and out["agreement"].shape == (H, W)
  assert 0.05 < out["mask"].mean() < 0.95, out["mask"].mean()
  assert 0.0 < out["agreement"].mean() < 1.0
  # Live: the library's engine, compiled from the model code, gives the same bits.
  np.testing.assert_array_equal(out["mask"], library.mask)
  np.testing.assert_array_equal(out["scores"], library.scores)
  np.testing.assert_array_equal(out["agreement"], library.agreement)
  assert not np.array_equal(library.mask, library.sam_mask)  # SimSAM changed the mask


def test_loaded_program_refuses_wrong_shapes(exported, phantom):
  image, box = phantom
  segment = export.load(exported)
  with pytest.raises(ValueError, match=r"image must have shape \(61, 83, 3\).*got shape "
                                       r"\(83, 61, 3\)"):
    segment(image.transpose(1, 0, 2), box)
  with pytest.raises(ValueError, match=r"dtype uint8.*float32"):
    segment(image.astype(np.float32), box)
  with pytest.raises(ValueError, match=r"box must have shape \(4,\)"):
    segment(image, box[None])


def test_sam_with_weights_as_an_argument(checkpoint, phantom, library, tmp_path):
  image, box = phantom
  out = str(tmp_path / "sam.jaxexport")
  summary = export.export(checkpoint, "sam", (H, W), out, platforms=["cpu"],
                          embed_weights=False)
  assert summary["platforms"] == ("cpu",)
  assert os.path.isfile(out + export.WEIGHTS_SUFFIX)
  segment = export.load(out)
  assert len(segment.exported.in_avals) > 2  # the weights are arguments
  got = jax.device_get(segment(image, box))
  # Another program than the engine's (SAM only): the mask is the same, the
  # IoU prediction within float32 rounding.
  np.testing.assert_array_equal(got["mask"], library.sam_mask)
  np.testing.assert_allclose(got["scores"], library.first_iou[None], rtol=1e-5)
  np.testing.assert_array_equal(got["agreement"], library.sam_mask.astype(np.float32))
  assert 0.05 < got["mask"].mean() < 0.95


@pytest.mark.parametrize("kwargs,message", [
    ({"method": "medsam"}, "--method='medsam'"),
    ({"image_size": (0, 5)}, "--image_size='0,5'"),
    ({"k": 0}, "--k=0"),
    ({"precision": "fp16"}, "--precision='fp16'"),
    ({"platforms": ["cpu", "rocm"]}, "--platforms='cpu,rocm'"),
    ({"checkpoint": "/nonexistent/ckpt"}, "--checkpoint='/nonexistent/ckpt'"),
    ({"checkpoint": "random:nope"}, "--checkpoint='random:nope'"),
])
def test_bad_arguments_are_refused_before_any_work(tmp_path, kwargs, message):
  args = {"checkpoint": "random:tiny", "method": "simsam", "image_size": (H, W),
          "out": str(tmp_path / "x.jaxexport"), **kwargs}
  with pytest.raises(export.ExportError) as err:
    export.export(args.pop("checkpoint"), args.pop("method"), args.pop("image_size"),
                  args.pop("out"), **args)
  assert message in str(err.value)
  assert os.listdir(tmp_path) == []


def test_cli_bad_flag_exits_non_zero_without_output(tmp_path):
  out = tmp_path / "x.jaxexport"
  run = subprocess.run(
      [sys.executable, "-m", "simsam_jax.export", "--checkpoint=random:tiny",
       "--image_size=61x83", f"--out={out}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert run.returncode != 0
  assert "--image_size='61x83'" in run.stderr
  assert os.listdir(tmp_path) == []
