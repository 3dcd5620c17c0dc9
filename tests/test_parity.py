"""Flax SAM vs the official PyTorch SAM and Hugging Face SamModel.

Both references hold the same random weights (all tensors randomised,
hypernetwork outputs scaled for decisive logits, the single-mask output
balanced so its masks are two-signed: `torch_reference.balance_single_mask_`);
the Flax models are made by the converter from a `.pth` of the official
state_dict and from `save_pretrained` output. float32, highest matmul
precision, fixed integer seeds per case.
"""

import numpy as np
import pytest
import torch

import torch_reference as tr
from simsam_jax.checkpoint import convert_checkpoint, load_model
from simsam_jax.modeling import get_preset, make_sam_functions

TOL = 1e-4
PRESETS = ["tiny", "tiny_wide"]
CASES = ["box", "box_point_mask", "points", "many"]
# Fixed prompt seed per (case, multimask): the same prompts in every process.
SEEDS = {(case, multimask): 10 * i + int(multimask)
         for i, case in enumerate(CASES) for multimask in (False, True)}


@pytest.fixture(scope="module", params=PRESETS)
def models(request, tmp_path_factory):
  config = get_preset(request.param)
  rng = np.random.default_rng(0)
  s = config.image_size
  pixels = rng.normal(size=(1, s, s, 3)).astype(np.float32)
  # Balance the single-mask output on this image with the "box" case's boxes.
  boxes = _prompts(config, "box", np.random.default_rng(SEEDS["box", False]))[2]
  pixels_t = torch.from_numpy(pixels).permute(0, 3, 1, 2)
  official, hf = tr.paired_models(
      config, seed=7, balance_on=([pixels_t] * len(boxes), list(boxes)))
  d = tmp_path_factory.mktemp(request.param)
  convert_checkpoint(tr.save_official_pth(official, str(d / "official.pth")),
                     str(d / "from_pth"))
  convert_checkpoint(tr.save_hf_folder(hf, str(d / "hf")), str(d / "from_hf"))
  out = {"config": config, "official": official, "hf": hf}
  for name in ("from_pth", "from_hf"):
    model = load_model(str(d / name))
    fns, state = make_sam_functions(model)
    out[name] = (model, fns, state)
  out["pixels"] = pixels
  with torch.no_grad():
    out["emb_official"] = official.image_encoder(
        torch.from_numpy(out["pixels"]).permute(0, 3, 1, 2))
    out["emb_hf"] = hf.get_image_embeddings(
        torch.from_numpy(out["pixels"]).permute(0, 3, 1, 2))
  return out


def _prompts(config, case, rng):
  """Prompt arrays for one case, in model-frame pixels. P prompt sets."""
  s, m = config.image_size, config.mask_input_size
  p = 50 if case == "many" else 3
  pts = lbl = box = mask = None
  x0y0 = rng.uniform(0, s * 0.5, size=(p, 2))
  box = np.concatenate([x0y0, x0y0 + rng.uniform(4, s * 0.5, size=(p, 2))], 1)
  box = box.astype(np.float32)
  if case in ("box_point_mask", "many"):
    pts = rng.uniform(0, s, size=(p, 1, 2)).astype(np.float32)
    lbl = rng.integers(0, 2, size=(p, 1)).astype(np.int32)
  if case == "points":
    box = None
    pts = rng.uniform(0, s, size=(p, 3, 2)).astype(np.float32)
    lbl = np.array([[1, 0, 1], [1, 1, -1], [0, -1, -1]], np.int32)
  if case == "box_point_mask":
    # A binary 0/1 mask prompt (an ellipse), as SimSAM feeds; one mask shared
    # by the prompts, since Hugging Face takes one mask per image.
    yy, xx = np.mgrid[0:m, 0:m]
    cy, cx, ry, rx = rng.uniform(0.3 * m, 0.7 * m, 2).tolist() + rng.uniform(0.1 * m, 0.3 * m, 2).tolist()
    ellipse = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    mask = np.broadcast_to(ellipse, (p, m, m)).astype(np.float32)
  return pts, lbl, box, mask


def _official(model, emb, pts, lbl, box, mask, multimask):
  with torch.no_grad():
    sparse, dense = model.prompt_encoder(
        points=None if pts is None else (torch.from_numpy(pts), torch.from_numpy(lbl)),
        boxes=None if box is None else torch.from_numpy(box),
        masks=None if mask is None else torch.from_numpy(mask)[:, None])
    low, iou = model.mask_decoder(
        image_embeddings=emb, image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
        multimask_output=multimask)
  return tuple(x.detach().numpy() for x in
               (sparse, dense.permute(0, 2, 3, 1), low, iou))


def _hf(model, emb, pts, lbl, box, mask, multimask):
  t = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a))[None]
  masks = None if mask is None else torch.from_numpy(np.ascontiguousarray(mask[:1]))[None]
  with torch.no_grad():
    sparse, dense = model.prompt_encoder(t(pts), t(lbl), t(box), masks)
    out = model(image_embeddings=emb, input_points=t(pts), input_labels=t(lbl),
                input_boxes=t(box), input_masks=masks, multimask_output=multimask)
  # Hugging Face keeps one dense embedding per image; ours is per prompt set.
  dense = np.broadcast_to(dense.detach().permute(0, 2, 3, 1).numpy(),
                          (sparse.shape[1],) + tuple(dense.shape[2:]) + (dense.shape[1],))
  return (sparse[0].detach().numpy(), dense, out.pred_masks[0].detach().numpy(),
          out.iou_scores[0].detach().numpy())


def _flax(bundle, emb, pts, lbl, box, mask, multimask, share_mask=False):
  model, fns, state = bundle
  b = lambda a: None if a is None else a[None]
  # share_mask passes the mask once, (1, 1, M, M), for all prompt sets.
  low, iou = fns.decode(state, emb, b(pts), b(lbl), b(box),
                        b(mask[:1]) if share_mask and mask is not None else b(mask),
                        multimask_output=multimask)
  sparse, dense = _prompt_embeddings(model, pts, lbl, box, mask)
  return np.asarray(sparse), np.asarray(dense), np.asarray(low[0]), np.asarray(iou[0])


def _prompt_embeddings(model, pts, lbl, box, mask):
  import jax
  args = {"points": pts, "point_labels": lbl, "box": box, "mask": mask}
  args = {k: v for k, v in args.items() if v is not None}
  return jax.vmap(lambda a: model.prompt_encoder(
      a.get("points"), a.get("point_labels"), a.get("box"), a.get("mask")))(args)


@pytest.mark.parametrize("source", ["from_pth", "from_hf"])
def test_image_embeddings(models, source):
  _, fns, state = models[source]
  ours = np.asarray(fns.encode(state, models["pixels"]))
  ref = models["emb_official" if source == "from_pth" else "emb_hf"]
  ref = ref.permute(0, 2, 3, 1).numpy()
  assert ours.shape == ref.shape
  np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)
  assert np.abs(ref).max() > 0.1  # not vacuous


@pytest.mark.parametrize("multimask", [False, True])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("source", ["from_pth", "from_hf"])
def test_decoder(models, source, case, multimask):
  if case == "many" and multimask:
    pytest.skip("50-prompt case runs single-mask, as SimSAM does")
  rng = np.random.default_rng(SEEDS[case, multimask])
  config = models["config"]
  pts, lbl, box, mask = _prompts(config, case, rng)
  if source == "from_pth":
    emb_t = models["emb_official"]
    ref = _official(models["official"], emb_t, pts, lbl, box, mask, multimask)
  else:
    emb_t = models["emb_hf"]
    ref = _hf(models["hf"], emb_t, pts, lbl, box, mask, multimask)
  emb = emb_t.permute(0, 2, 3, 1).numpy()
  ours = _flax(models[source], emb, pts, lbl, box, mask, multimask,
               share_mask=source == "from_hf")
  for name, a, r in zip(("sparse", "dense", "logits", "iou"), ours, ref):
    assert a.shape == r.shape, (name, a.shape, r.shape)
    print(f"{source} {case} multimask={multimask} {name}: max|delta|="
          f"{np.abs(a - r).max():.2e} (max|ref|={np.abs(r).max():.2f})")
    # 1e-4 of the output's scale: the balanced random decoders amplify float32
    # rounding ~1e-4 relative once a mask prompt is given (1.6e-4 on logits of
    # up to 7 in the tiny preset's box + point + mask case).
    np.testing.assert_allclose(a, r, atol=TOL * max(1.0, np.abs(r).max()), rtol=0,
                               err_msg=name)
  logits = ref[2]
  assert logits.shape[1] == (config.num_multimask_outputs if multimask else 1)
  # Not vacuous: logits far from zero (>= 100x the tolerance) and varying
  # over the image.
  assert np.mean(np.abs(logits) > 100 * TOL) > 0.5
  assert np.median(logits.reshape(logits.shape[0] * logits.shape[1], -1).std(-1)) > 0.05
  if not multimask:  # decisive single masks: 5-95% foreground each
    foreground = (logits[:, 0] > 0).mean(axis=(1, 2))
    assert np.all((foreground >= 0.05) & (foreground <= 0.95)), foreground


def test_both_formats_give_the_same_flax_weights(models):
  import jax
  from flax import nnx
  a = jax.tree.leaves(nnx.state(models["from_pth"][0]))
  b = jax.tree.leaves(nnx.state(models["from_hf"][0]))
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
