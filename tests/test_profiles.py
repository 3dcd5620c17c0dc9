"""Preprocessing profiles: registry, sidecar, overrides, geometry.

The MedSAM transcription is checked in test_medsam_mirror.py; here, the
plumbing: `convert --profile` records the profile, old sidecars read as
`sam`, a run-time override is logged, unknown names are refused before any
work, and the `sam` profile is exactly `processing`'s pre/post-processing.
"""

import dataclasses
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import torch_reference as tr
from simsam_jax import processing, profiles
from simsam_jax.checkpoint import convert_checkpoint, read_sidecar
from simsam_jax.modeling import get_preset
from simsam_jax.simsam import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def pth(tmp_path_factory):
  model = tr.randomize_(tr.official_sam(get_preset("tiny")), seed=1)
  return tr.save_official_pth(model, str(tmp_path_factory.mktemp("src") / "tiny.pth"))


def test_sam_profile_is_processing():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
  pixels, info = profiles.get("sam").preprocess(image, 160)
  ref_pixels, ref_info = processing.preprocess(image, 160)
  np.testing.assert_array_equal(pixels, ref_pixels)
  assert info == ref_info and info.profile == "sam"
  logits = jnp.asarray(rng.normal(size=(2, 40, 40)), jnp.float32)
  np.testing.assert_array_equal(
      np.asarray(profiles.get("sam").masks(logits, info)),
      np.asarray(processing.postprocess_masks(logits, info)))
  np.testing.assert_array_equal(
      np.asarray(pipeline.first_probabilities(logits[0], info)),
      np.asarray(jnp.asarray(1.0) / (1 + jnp.exp(-processing.postprocess_logits(logits[0], info)))))


def test_medsam_geometry_scales_each_axis():
  info = profiles.get("medsam").geometry((300, 400), 1024)
  assert info.resized_size == (1024, 1024) and info.profile == "medsam"
  xy = pipeline.to_model_frame(jnp.asarray([[400.0, 300.0], [100.0, 30.0]]), info)
  np.testing.assert_allclose(np.asarray(xy), [[1024, 1024], [256, 102.4]], rtol=1e-6)
  # A mask prompt covers the whole low-res grid (no padding).
  binary = jnp.zeros((300, 400), bool).at[:, 200:].set(True)
  frame = np.asarray(pipeline.binary_in_low_res_frame(binary, info, 256))
  assert frame.shape == (256, 256) and frame[:, 128:].all() and not frame[:, :128].any()


def test_registry_and_resolve(caplog):
  with pytest.raises(ValueError, match="known: medsam, sam"):
    profiles.get("nope")
  assert profiles.resolve("medsam") == ("medsam", "checkpoint")
  with pytest.raises(ValueError, match="--profile='nope'"):
    profiles.resolve("sam", "nope")
  with pytest.raises(ValueError, match="not registered"):
    profiles.resolve("gone")
  with caplog.at_level("WARNING"):
    assert profiles.resolve("medsam", "sam", "--config.profile") == ("sam", "flag")
  assert "overrides the checkpoint's preprocessing profile 'medsam'" in caplog.text

  @dataclasses.dataclass(frozen=True)
  class Custom(profiles.MedSamProfile):
    name: str = "custom_test_profile"

  profiles.register(Custom())
  assert "custom_test_profile" in profiles.names()
  with pytest.raises(ValueError, match="already registered"):
    profiles.register(Custom())


def test_convert_records_the_profile(pth, tmp_path):
  meta = convert_checkpoint(pth, str(tmp_path / "medsam"), profile="medsam")
  assert meta["profile"] == "medsam" == read_sidecar(str(tmp_path / "medsam"))["profile"]
  # A sidecar written before profiles existed reads as "sam".
  sidecar = tmp_path / "medsam" / "simsam_jax.json"
  data = json.loads(sidecar.read_text())
  del data["profile"]
  sidecar.write_text(json.dumps(data))
  assert read_sidecar(str(tmp_path / "medsam"))["profile"] == "sam"
  with pytest.raises(ValueError, match="--profile='nope'"):
    convert_checkpoint(pth, str(tmp_path / "bad"), profile="nope")
  assert not (tmp_path / "bad").exists()


def test_convert_cli_unknown_profile_writes_nothing(pth, tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  done = subprocess.run([sys.executable, "-m", "simsam_jax.convert", f"--src={pth}",
                         f"--dst={tmp_path / 'out'}", "--profile=nope"], env=env,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 1 and "--profile='nope'" in done.stderr
  assert not (tmp_path / "out").exists()
