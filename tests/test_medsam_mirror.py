"""The `medsam` profile vs MedSAM's own inference script, line by line.

The reference below transcribes `MedSAM_Inference.py` (bowang-lab/MedSAM)
on the official `segment_anything` modules: `skimage.io.imread`, grey ->
3 channels, `skimage.transform.resize(img_3c, (1024, 1024), order=3,
preserve_range=True, anti_aliasing=True).astype(np.uint8)`, min-max with a
1e-8 floor, HWC -> CHW, `box / [W, H, W, H] * 1024`, `image_encoder`,
`prompt_encoder(points=None, boxes=box, masks=None)`, `mask_decoder(...,
multimask_output=False)`, sigmoid, bilinear to (H, W) without aligned
corners, `> 0.5`.

Ours: the same random weights saved as an official `.pth`, converted with
`convert_checkpoint(..., profile="medsam")`, loaded by `predictor.load_sam`
(the profile comes from the sidecar) and run by `Predictor.predict_timed` and the
SimSAM engine. Preset `tiny_1024` (MedSAM's 1024 / 64 / 256 geometry with
a two-block encoder); real sample images at their native sizes, boxes from
their ground truth; the decoder is balanced on them so masks are decisive.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import torch_reference as tr
from simsam_jax import predictor, processing, profiles
from simsam_jax.checkpoint import convert_checkpoint, read_sidecar
from simsam_jax.modeling import get_preset
from simsam_jax.simsam import SimSam, SimSamConfig

skimage_io = pytest.importorskip("skimage.io")
skimage_transform = pytest.importorskip("skimage.transform")


def _samples(root):
  """(name, image path, mask path): a CVC frame and a BUSI image, native sizes.

  Each image costs two 1024 x 1024 x 3 cubic resizes (several seconds), so
  two images of different aspect ratios are used (ISIC is RGB like CVC).
  """
  busi = root / "busi" / "Dataset_BUSI_with_GT" / "malignant" / "malignant (2).png"
  cvc = root / "cvc_clinicdb"
  return [("cvc/190.tif", cvc / "Original" / "190.tif", cvc / "Ground Truth" / "190.tif"),
          (f"busi/{busi.name}", busi, busi.parent / (busi.stem + "_mask.png"))]


def _box(mask_path):
  """Integer (x0, y0, x1, y1) of the ground truth's foreground."""
  mask = processing.load_image(mask_path)[..., 0] > 0
  ys, xs = np.nonzero(mask)
  return np.array([xs.min(), ys.min(), xs.max(), ys.max()])


def _medsam_preprocess(img_np):
  """MedSAM_Inference.py, image preprocessing, as written there."""
  if len(img_np.shape) == 2:
    img_3c = np.repeat(img_np[:, :, None], 3, axis=-1)
  else:
    img_3c = img_np
  H, W, _ = img_3c.shape
  img_1024 = skimage_transform.resize(
      img_3c, (1024, 1024), order=3, preserve_range=True, anti_aliasing=True
  ).astype(np.uint8)
  img_1024 = (img_1024 - img_1024.min()) / np.clip(
      img_1024.max() - img_1024.min(), a_min=1e-8, a_max=None)
  img_1024_tensor = torch.tensor(img_1024).float().permute(2, 0, 1).unsqueeze(0)
  return img_3c, img_1024_tensor, H, W


@torch.no_grad()
def _medsam_inference(medsam_model, img_embed, box_1024, H, W):
  """MedSAM_Inference.py `medsam_inference`, returning the logits as well."""
  box_torch = torch.as_tensor(box_1024, dtype=torch.float, device=img_embed.device)
  if len(box_torch.shape) == 2:
    box_torch = box_torch[:, None, :]  # (B, 1, 4)
  sparse_embeddings, dense_embeddings = medsam_model.prompt_encoder(
      points=None, boxes=box_torch, masks=None)
  low_res_logits, _ = medsam_model.mask_decoder(
      image_embeddings=img_embed,
      image_pe=medsam_model.prompt_encoder.get_dense_pe(),
      sparse_prompt_embeddings=sparse_embeddings,
      dense_prompt_embeddings=dense_embeddings,
      multimask_output=False)
  low_res_pred = torch.sigmoid(low_res_logits)
  low_res_pred = F.interpolate(low_res_pred, size=(H, W), mode="bilinear",
                               align_corners=False)
  low_res_pred = low_res_pred.squeeze().cpu().numpy()
  medsam_seg = (low_res_pred > 0.5).astype(np.uint8)
  return medsam_seg, low_res_logits[0, 0].numpy(), low_res_pred


@pytest.fixture(scope="module")
def setup(shared_data, tmp_path_factory):
  config = get_preset("tiny_1024")
  samples = []
  for name, image_path, mask_path in _samples(shared_data):
    img_np = skimage_io.imread(image_path)
    img_3c, tensor, H, W = _medsam_preprocess(img_np)
    box_np = _box(mask_path)[None]
    box_1024 = box_np / np.array([W, H, W, H]) * 1024
    pixels, info = profiles.get("medsam").preprocess(img_3c, 1024)
    samples.append(dict(name=name, path=image_path, img_3c=img_3c, tensor=tensor,
                        H=H, W=W, box=box_np[0], box_1024=box_1024,
                        pixels=pixels, info=info))
  official = tr.randomize_(tr.official_sam(config), seed=11, hyper_scale=100.0)
  tr.balance_single_mask_(official, [s["tensor"].numpy() for s in samples],
                          [s["box_1024"][0] for s in samples])
  with torch.no_grad():
    for s in samples:
      image_embedding = official.image_encoder(s["tensor"])
      s["seg"], s["logits"], s["probs"] = _medsam_inference(
          official, image_embedding, s["box_1024"], s["H"], s["W"])
  pth = tr.save_official_pth(official, str(tmp_path_factory.mktemp("pth") / "medsam.pth"))
  dst = str(tmp_path_factory.mktemp("ckpt") / "medsam")
  convert_checkpoint(pth, dst, profile="medsam")
  return {"samples": samples, "dst": dst, "sam": predictor.load_sam(dst)}


def test_sidecar_records_the_profile_and_tools_read_it(setup):
  assert read_sidecar(setup["dst"])["profile"] == "medsam"
  sam = predictor.with_profile(setup["sam"], None)
  assert sam.description["profile"] == "medsam"
  assert sam.description["profile_source"] == "checkpoint"


def test_reader_gives_the_script_its_image(setup):
  for s in setup["samples"]:
    np.testing.assert_array_equal(processing.load_image(s["path"]), s["img_3c"])


def test_resize_equals_scikit_image(setup):
  s = setup["samples"][0]
  ours = profiles.medsam_resize(s["img_3c"], 1024)
  ref = skimage_transform.resize(s["img_3c"], (1024, 1024), order=3,
                                 preserve_range=True, anti_aliasing=True)
  np.testing.assert_array_equal(ours, ref)
  # Shrinking too (the Gaussian anti-aliasing is active), on a grey image.
  grey = s["img_3c"][..., :1].repeat(8, axis=0)[:1500]
  np.testing.assert_array_equal(
      profiles.medsam_resize(grey, 256),
      skimage_transform.resize(grey, (256, 256), order=3, preserve_range=True,
                               anti_aliasing=True))
  for s in setup["samples"]:
    np.testing.assert_array_equal(s["pixels"], s["tensor"][0].permute(1, 2, 0).numpy())
    assert s["info"].resized_size == (1024, 1024) and s["info"].profile == "medsam"


def _ours(sam, s):
  """Box-only single-mask logits (M, M) and mask (H, W) under `sam`'s profile."""
  profile = predictor.sam_profile(sam)
  if profile.name == "medsam":
    pixels, info = s["pixels"], s["info"]
  else:
    pixels, info = profile.preprocess(s["img_3c"], 1024)
  boxes, _, _ = predictor.model_prompts(tuple(float(v) for v in s["box"]), [], info)
  embedding = sam.fns.encode(sam.state, pixels[None])
  logits, _ = sam.fns.decode(sam.state, embedding, None, None, boxes, None)
  logits = logits[0, 0, 0]
  return np.asarray(logits), np.asarray(profile.masks(logits, info)), boxes[0, 0]


def test_low_res_logits_and_masks_match_medsam(setup):
  sam = predictor.with_profile(setup["sam"], None)
  for s in setup["samples"]:
    logits, mask, box = _ours(sam, s)
    np.testing.assert_allclose(logits, s["logits"], atol=1e-4, err_msg=s["name"])
    np.testing.assert_allclose(box, s["box_1024"][0], rtol=1e-6)
    fraction = s["seg"].mean()
    assert 0.05 < fraction < 0.95, (s["name"], fraction)  # decisive fixture
    assert mask.shape == (s["H"], s["W"])
    np.testing.assert_array_equal(mask, s["seg"].astype(bool), err_msg=s["name"])


def test_segment_command_path_matches_medsam(setup):
  """`Predictor.predict_timed` (the CLI's SAM path) under the sidecar's profile."""
  sam = predictor.Predictor(setup["sam"])
  s = setup["samples"][0]
  result = sam.predict_timed(s["img_3c"], tuple(float(v) for v in s["box"]), [], False)
  np.testing.assert_allclose(result.low_res_logits[0], s["logits"], atol=1e-4)
  np.testing.assert_array_equal(result.mask, s["seg"].astype(bool))


def test_sam_profile_would_feed_another_input(setup):
  """The profile decides: under `sam` the same weights give other logits."""
  sam = predictor.with_profile(setup["sam"], "sam")
  assert sam.description["profile_source"] == "flag"
  s = setup["samples"][1]
  logits, mask, _ = _ours(sam, s)
  assert np.abs(logits - s["logits"]).max() > 0.1
  assert (mask != s["seg"].astype(bool)).mean() > 0.001


def test_simsam_under_medsam_starts_from_medsam(setup):
  """SimSAM's box-only mask and probabilities are MedSAM's, at native size."""
  loaded = setup["sam"]
  from flax import nnx
  engine = SimSam(nnx.merge(loaded.fns.graphdef, loaded.state), SimSamConfig(k=8))
  for s in setup["samples"][:1]:
    out = engine.run(s["pixels"], s["box"].astype(np.float32), s["info"])
    info = s["info"]
    np.testing.assert_array_equal(np.asarray(out.sam_mask), s["seg"].astype(bool))
    from simsam_jax.simsam import pipeline
    probs = pipeline.first_probabilities(out.first_low_res_logits, info)
    np.testing.assert_allclose(np.asarray(probs), s["probs"], atol=1e-5)
    clicks = np.asarray(out.clicks)
    assert clicks[:, 0].max() < s["W"] and clicks[:, 1].max() < s["H"]
    labels = np.asarray(out.labels)
    seg = s["seg"].astype(bool)
    # Labels are the opposite of MedSAM's prediction at each click.
    np.testing.assert_array_equal(labels, 1 - seg[clicks[:, 1], clicks[:, 0]])
