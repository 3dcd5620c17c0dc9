"""`evaluate`'s per-image numbers, recomputed without simsam_jax.

A smoke-size evaluation (random `tiny` weights, K = 3, paper protocol) runs
through the public `evaluate(config, workdir)` on a few real sample files
(linked into a temporary dataset folder) with `save_masks=True`. Every row of
`per_image.csv` is then recomputed from the saved mask PNG and a ground truth
prepared by readers written here after the published code (`src/corpora.py`:
`DefaultFileReader`, PIL `Image.open(p).resize((256, 256))`, for BUSI;
`TIFFileReader`, `tifffile.imread` + `cv2.resize(x, (256, 256))`, for
CVC-ClinicDB; then `> 0`), with DSC and IoU written out and NSD from
DeepMind's `surface_distance` called directly (tolerance 2, spacing (1, 1)).
The `sam` row's mask must equal `python -m simsam_jax.segment --method=sam`
on the same 256 x 256 image and ground-truth box.
"""

import csv
import os
import pathlib
import subprocess
import sys

import cv2
import numpy as np
import pytest
import surface_distance
import tifffile
from PIL import Image

from simsam_jax import evaluate as ev
from simsam_jax.evaluation.config import get_eval_config

REPO = pathlib.Path(__file__).resolve().parents[1]
SIZE = 256


def _default_reader(path):
  """`DefaultFileReader.__call__`, transcribed."""
  return np.array(Image.open(path).resize((256, 256)))


def _tiff_reader(path):
  """`TIFFileReader.__call__`, transcribed."""
  return cv2.resize(tifffile.imread(path), (256, 256))


def _label(mask):
  """`PathDataset.preprocess`: 3 channels -> `(m > 0).max(-1)`, else `> 0`."""
  return (mask > 0).max(axis=-1) if mask.ndim == 3 else mask > 0


def _box(mask):
  """`get_bounding_box` without perturbation."""
  ys, xs = np.where(mask > 0)
  if len(xs) == 0:
    return [0, 0, mask.shape[1], mask.shape[0]]
  return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


def _metrics(pred, gt):
  """DSC, IoU, NSD (tolerance 2 px, spacing (1, 1)); NaN when both empty."""
  inter, total = np.logical_and(pred, gt).sum(), pred.sum() + gt.sum()
  if total == 0:
    return np.nan, np.nan, np.nan
  if pred.sum() == 0 or gt.sum() == 0:
    return 0.0, 0.0, 0.0
  distances = surface_distance.compute_surface_distances(gt, pred, (1.0, 1.0))
  nsd = surface_distance.compute_surface_dice_at_tolerance(distances, 2.0)
  return 2 * inter / total, inter / np.logical_or(pred, gt).sum(), nsd


# dataset -> (config arg, [(id, image, mask)] relative to shared/data, reader).
CASES = {
    "busi": ("busi", [
        ("malignant_1", "busi/Dataset_BUSI_with_GT/malignant/malignant (1).png",
         "busi/Dataset_BUSI_with_GT/malignant/malignant (1)_mask.png"),
        ("benign_16", "busi/Dataset_BUSI_with_GT/benign/benign (16).png",
         "busi/Dataset_BUSI_with_GT/benign/benign (16)_mask.png"),
    ], _default_reader),
    "cvc_clinicdb": ("cvc_clinicdb", [
        ("cvc_12", "cvc_clinicdb/Original/12.tif", "cvc_clinicdb/Ground Truth/12.tif"),
        ("cvc_60", "cvc_clinicdb/Original/60.tif", "cvc_clinicdb/Ground Truth/60.tif"),
    ], _tiff_reader),
}


def _manual_dir(shared, root, dataset, files):
  """Links the chosen real files into a dataset folder of the released layout."""
  for _, image, mask in files:
    for rel in (image, mask):
      parts = pathlib.Path(rel).parts[1:]  # drop "busi" / "cvc_clinicdb"
      target = root.joinpath(*parts)
      target.parent.mkdir(parents=True, exist_ok=True)
      os.symlink(shared / rel, target)
  return root


@pytest.fixture(scope="module", params=sorted(CASES))
def run(request, shared_data, tmp_path_factory):
  dataset = request.param
  arg, files, reader = CASES[dataset]
  tmp = tmp_path_factory.mktemp(dataset)
  config = get_eval_config(arg)
  config.manual_dir = str(_manual_dir(shared_data, tmp / "manual", dataset, files))
  config.data_dir = str(tmp / "tfds")
  config.checkpoint = "random:tiny"
  config.k = 3
  config.split = "all"
  config.methods = "sam,simsam,k1"
  config.save_masks = True
  config.num_figures = 0
  if dataset == "busi":
    config.builder_config = "full"  # benign (16) is not among the paper's 437
  workdir = tmp / "work"
  ev.evaluate(config, str(workdir), progress=False)
  with open(workdir / "per_image.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  return {"dataset": dataset, "files": files, "reader": reader, "rows": rows,
          "workdir": workdir, "tmp": tmp, "shared": shared_data, "config": config}


def test_every_row_recomputed_independently(run):
  files = {i: (image, mask) for i, image, mask in run["files"]}
  rows = run["rows"]
  assert sorted({r["id"] for r in rows}) == sorted(files)
  assert sorted(r["method"] for r in rows) == sorted(["sam", "simsam", "k1"] * len(files))
  foregrounds = []
  for row in rows:
    _, mask_rel = files[row["id"]]
    gt = _label(run["reader"](run["shared"] / mask_rel))
    assert gt.shape == (SIZE, SIZE) and 0 < gt.mean() < 1
    saved = np.asarray(Image.open(run["workdir"] / "masks" / row["method"] / f"{row['id']}.png"))
    assert saved.shape == (SIZE, SIZE) and set(np.unique(saved)) <= {0, 255}
    pred = saved > 0
    foregrounds.append(pred.mean())
    for name, value in zip(("dsc", "iou", "nsd"), _metrics(pred, gt)):
      assert float(row[name]) == pytest.approx(value, abs=1e-6), (row["id"], row["method"], name)
  print(run["dataset"], "predicted foreground fractions", np.round(foregrounds, 3))
  if run["dataset"] == "cvc_clinicdb":  # the paper's > 0 keeps frame 12's grey noise
    noisy = _tiff_reader(run["shared"] / files["cvc_12"][1])
    assert ((noisy > 0) & (noisy <= 127)).any()


def test_sam_row_equals_the_segment_command(run):
  for example_id, image_rel, mask_rel in run["files"][:1]:  # one CLI run each
    reader = run["reader"]
    image = reader(run["shared"] / image_rel)
    if image.ndim == 2:
      image = np.stack([image] * 3, -1)
    image = image[..., :3]
    gt = _label(reader(run["shared"] / mask_rel))
    path = run["tmp"] / f"{example_id}_256.png"
    Image.fromarray(image).save(path)  # lossless: the same 256 x 256 pixels
    out = run["tmp"] / f"{example_id}_sam.png"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "simsam_jax.segment", "--checkpoint=random:tiny",
           f"--image={path}", "--method=sam", f"--box={','.join(map(str, _box(gt)))}",
           f"--out={out}"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    segment = np.asarray(Image.open(out)) > 0
    saved = np.asarray(Image.open(run["workdir"] / "masks" / "sam" / f"{example_id}.png")) > 0
    np.testing.assert_array_equal(segment, saved, err_msg=example_id)
