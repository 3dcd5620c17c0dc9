"""The `nifti_folder` dataset: slices, splits by volume, spacing into NSD.

Tiny synthetic volumes are written with nibabel (anisotropic voxels, a
non-identity affine); NSD is recomputed with DeepMind's `surface-distance`
from the masks the evaluation saved, at the spacing in mm read back from the
files with nibabel.
"""

import csv
import os

import numpy as np
import pytest
from PIL import Image

import data_fixtures

from simsam_jax import evaluate
from simsam_jax.data import loading, protocols
from simsam_jax.data.nifti_folder import chosen_slices, volume_name
from simsam_jax.evaluation.config import get_eval_config

nib = pytest.importorskip("nibabel")
surface_distance = pytest.importorskip("surface_distance")

# surface-distance imports deprecated scipy namespaces.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SHAPE, ZOOMS, NAMES = data_fixtures.NIFTI_SHAPE, data_fixtures.NIFTI_ZOOMS, data_fixtures.NIFTI_NAMES
_write_tree = data_fixtures.make_nifti_tree


def test_names_and_slice_choice():
  assert volume_name("liver_3.nii.gz") == volume_name("liver_3_0000.nii.gz") == "liver_3"
  assert volume_name("brain.nii") == "brain" and volume_name("notes.txt") == ""
  label = np.zeros((4, 4, 5), bool)
  label[0, 0, 1] = label[:2, :2, 3] = label[:2, :1, 4] = True
  assert chosen_slices(label, "labelled") == [1, 3, 4]
  assert chosen_slices(label, "largest") == [3]
  assert chosen_slices(np.zeros((2, 2, 2), bool), "largest") == []


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
  root = tmp_path_factory.mktemp("nifti")
  return root, _write_tree(root)


def _examples(tree, data_dir, config=None):
  builder = loading.prepare_builder("nifti_folder", data_dir, tree[0], config)
  return builder, list(loading.iter_split(builder, "all"))


def test_every_labelled_slice_with_its_spacing(tree, tmp_path):
  builder, examples = _examples(tree, tmp_path / "a")
  volumes = tree[1]
  expected = {f"{name}_z{k:04d}" for name in NAMES for k in (1, 2, 4)}
  assert {e["id"] for e in examples} == expected
  for e in examples:
    image, label = volumes[e["volume"]]
    k = e["slice"]
    np.testing.assert_array_equal(e["mask"] > 0, label[:, :, k].T > 0)
    plane = image[:, :, k].T.astype(np.float64)
    scaled = ((plane - plane.min()) / (plane.max() - plane.min()) * 255).astype(np.uint8)
    np.testing.assert_array_equal(e["image"][..., 0], scaled)
    np.testing.assert_allclose(e["spacing"], (ZOOMS[1], ZOOMS[0]), rtol=1e-6)
    prepared = protocols.prepare(e, "native", "nifti_folder")
    assert prepared.spacing == pytest.approx((ZOOMS[1], ZOOMS[0]))
    # The paper protocol's 256 x 256 resize scales the spacing.
    paper = protocols.prepare(e, "paper", "nifti_folder")
    assert paper.spacing == pytest.approx(
        (ZOOMS[1] * SHAPE[1] / 256, ZOOMS[0] * SHAPE[0] / 256), rel=1e-6)
  # Splits are by volume and deterministic (a second build agrees).
  by_split = {}
  for e in examples:
    by_split.setdefault(e["split"], set()).add(e["volume"])
  assert sum(len(v) for v in by_split.values()) == len(NAMES)
  assert set(by_split) == {"train", "validation", "test"}
  _, again = _examples(tree, tmp_path / "b")
  assert {(e["id"], e["split"]) for e in again} == {(e["id"], e["split"]) for e in examples}
  assert builder.info.metadata["ignored_files"] == ["imagesTr/README.txt"]


def test_largest_slice_config(tree, tmp_path):
  _, examples = _examples(tree, tmp_path, "largest")
  assert sorted(e["id"] for e in examples) == sorted(f"{n}_z0002" for n in NAMES)


def test_spacing_reaches_nsd(tree, tmp_path):
  config = get_eval_config("nifti_folder,native")
  config.data_dir = str(tmp_path / "tfds")
  config.manual_dir = str(tree[0])
  config.checkpoint = "random:tiny"
  config.methods = "sam"
  config.split = "all"
  config.num_figures = 0
  config.save_masks = True
  config.nsd_tolerance_mm = 2.0
  workdir = tmp_path / "run"
  results = evaluate.evaluate(config, str(workdir), progress=False)
  assert results["nsd_tolerance_used"] == 2.0
  with open(workdir / "per_image.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 3 * len(NAMES)
  volumes = tree[1]
  checked = 0
  for row in rows:
    name, k = row["id"].rsplit("_z", 1)
    gt = volumes[name][1][:, :, int(k)].T > 0
    pred = np.asarray(Image.open(workdir / "masks" / "sam" / f"{row['id']}.png")) > 0
    if not pred.any():
      continue
    zooms = nib.load(tree[0] / "labelsTr" / f"{name}.nii.gz").header.get_zooms()
    spacing_mm = (zooms[1], zooms[0])
    distances = surface_distance.compute_surface_distances(gt, pred, spacing_mm)
    expected = surface_distance.compute_surface_dice_at_tolerance(distances, 2.0)
    assert float(row["nsd"]) == pytest.approx(expected, abs=1e-6), row["id"]
    in_pixels = surface_distance.compute_surface_dice_at_tolerance(
        surface_distance.compute_surface_distances(gt, pred, (1.0, 1.0)), 2.0)
    checked += in_pixels != pytest.approx(expected, abs=1e-6)
  assert checked > 0  # the spacing changed at least one NSD value


def test_missing_label_is_bad_input(tmp_path):
  _write_tree(tmp_path / "manual")
  os.remove(tmp_path / "manual" / "labelsTr" / "case_2.nii.gz")
  from simsam_jax.data.common import DatasetError
  with pytest.raises(DatasetError, match="case_2"):
    loading.prepare_builder("nifti_folder", tmp_path / "tfds", tmp_path / "manual")
