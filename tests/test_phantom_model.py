"""The committed phantom-trained checkpoint (`checkpoints/phantom_tiny`).

Its sidecar records the training config and the phantom-test metrics that
`simsam_jax.training.phantom_model.record` measured; this re-measures the
recorded check (SAM on 4 test phantoms) with the evaluation code.
"""

import pathlib

from simsam_jax.checkpoint import read_sidecar
from simsam_jax.training import phantom_model

REPO = pathlib.Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "checkpoints" / "phantom_tiny"


def test_checkpoint_is_small_and_documented():
  size = sum(f.stat().st_size for f in CHECKPOINT.rglob("*") if f.is_file())
  assert size <= 10 * 2 ** 20, size
  sidecar = read_sidecar(str(CHECKPOINT))
  assert sidecar["num_parameters"] <= 3_000_000
  source = sidecar["source"]
  assert source["config"]["mode"] == "full" and source["config"]["prompt"] == "interactive"
  assert source["base_checkpoint"]["spec"] == "scratch"
  test = sidecar["metrics"]["phantom_test"]
  assert test["num_images"] == 24
  assert test["mean_percent"]["sam"]["dsc"] >= 80.0, test


def test_checkpoint_reproduces_its_recorded_dsc(tmp_path):
  recorded = read_sidecar(str(CHECKPOINT))["metrics"]["check"]
  got = phantom_model.check(str(CHECKPOINT), str(tmp_path / "tfds"), str(tmp_path / "eval"))
  assert got["ids"] == recorded["ids"] and len(got["ids"]) == 4
  assert abs(got["sam_dsc"] - recorded["sam_dsc"]) <= 0.1, (got, recorded)
