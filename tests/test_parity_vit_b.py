"""Full-size check: ViT-B at 1024 x 1024 from both checkpoint formats.

One set of random weights (every tensor randomised, hypernetwork outputs
scaled by 25, mask token 0's output balanced on this image and box so the
single masks are two-signed: `torch_reference.balance_single_mask_`) is
saved as an official `.pth` and as Hugging Face `save_pretrained` output and
converted from both. Pixels and prompts are drawn from fixed integer seeds.

The two conversions give the same Flax arrays (asserted exactly; their
configs differ only in the two-way blocks' LayerNorm epsilon, 1e-5 official
and 1e-6 Hugging Face), so the ViT-B image encoder runs once on our side and
once per reference (official `ImageEncoderViT`, HF `get_image_embeddings`).
Each format's decoder then decodes box-only and box + click prompts, single-
and multi-mask, from OUR embedding, against its reference decoding from the
reference's own embedding.

Tolerances are those of a 12-block ViT in float32: max |delta embedding| and
max |delta logits| <= 1e-3, >= 99.9% agreement of the logits' sign. Every
single-mask case is decisive: 5-95% foreground on both sides.
"""

import jax
import numpy as np
import pytest
import torch
from flax import nnx

import torch_reference as tr
from simsam_jax.checkpoint import convert_checkpoint, load_model
from simsam_jax.modeling import get_preset, make_sam_functions

WEIGHT_SEED = 11
PROMPT_SEED = 5  # pixels, box and click
TOL = 1e-3


def _inputs():
  """(1, 1024, 1024, 3) pixels, (4,) box and (2,) click inside it (model frame)."""
  rng = np.random.default_rng(PROMPT_SEED)
  pixels = rng.normal(size=(1, 1024, 1024, 3)).astype(np.float32)
  x0, y0 = rng.integers(150, 350, size=2)
  x1, y1 = rng.integers(650, 850, size=2)
  click = rng.integers([x0 + 100, y0 + 100], [x1 - 100, y1 - 100])
  return pixels, np.float32([x0, y0, x1, y1]), np.float32(click)


def _official(model, emb, pts, lbl, box, multimask):
  with torch.no_grad():
    sparse, dense = model.prompt_encoder(
        points=None if pts is None else (torch.from_numpy(pts), torch.from_numpy(lbl)),
        boxes=torch.from_numpy(box)[None], masks=None)
    low, _ = model.mask_decoder(
        image_embeddings=emb, image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
        multimask_output=multimask)
  return low[None].numpy()  # (1, 1, K, 256, 256)


def _hf(model, emb, pts, lbl, box, multimask):
  with torch.no_grad():
    out = model(image_embeddings=emb,
                input_points=None if pts is None else torch.from_numpy(pts),
                input_labels=None if lbl is None else torch.from_numpy(lbl),
                input_boxes=torch.from_numpy(box)[None, None], multimask_output=multimask)
  return out.pred_masks.numpy()  # (1, 1, K, 256, 256)


@pytest.mark.slow
def test_vit_b_1024_both_formats(tmp_path):
  config = get_preset("vit_b")
  pixels, box, click = _inputs()
  x = torch.from_numpy(pixels).permute(0, 3, 1, 2)
  official = tr.randomize_(tr.official_sam(config), WEIGHT_SEED)
  with torch.no_grad():
    emb_official = official.image_encoder(x)
  tr.balance_single_mask_(official, [x], [box], embeddings=[emb_official])
  hf = tr.hf_twin(official, config)
  with torch.no_grad():
    emb_hf = hf.get_image_embeddings(x)
  convert_checkpoint(tr.save_official_pth(official, str(tmp_path / "sam_vit_b.pth")),
                     str(tmp_path / "from_pth"))
  convert_checkpoint(tr.save_hf_folder(hf, str(tmp_path / "hf")), str(tmp_path / "from_hf"))
  models = {src: load_model(str(tmp_path / src)) for src in ("from_pth", "from_hf")}

  # Both formats: the same arrays; configs apart from the two-way blocks' eps.
  a, b = (nnx.state(models[s]) for s in ("from_pth", "from_hf"))
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for la, lb in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(la), np.asarray(lb))
  eps = {s: m.config.transformer_layer_norm_eps for s, m in models.items()}
  assert eps == {"from_pth": 1e-5, "from_hf": 1e-6}

  fns, state = make_sam_functions(models["from_pth"])
  emb = fns.encode(state, pixels)  # the one JAX encode (same arrays for both)
  for source, ref_emb in (("from_pth", emb_official), ("from_hf", emb_hf)):
    d_emb = np.abs(np.asarray(emb) - ref_emb.permute(0, 2, 3, 1).numpy()).max()
    print(f"{source}: max|d emb|={d_emb:.2e} (max|emb|={ref_emb.abs().max():.2f})")
    assert d_emb <= TOL, (source, d_emb)

  boxes = box[None, None]  # (B, P, 4)
  cases = {"box": (None, None),  # (B, P, N, 2), (B, P, N)
           "box_click": (click[None, None, None], np.ones((1, 1, 1), np.int32))}
  for source, model in models.items():
    fns, state = make_sam_functions(model)
    for case, (pts, lbl) in cases.items():
      for multimask in (False, True):
        low, _ = fns.decode(state, emb, pts, lbl, boxes, None, multimask_output=multimask)
        low = np.asarray(low)
        p, l = (None, None) if pts is None else (pts[0], lbl[0])
        if source == "from_pth":
          ref = _official(official, emb_official, p, l, box, multimask)
        else:
          ref = _hf(hf, emb_hf, pts, lbl, box, multimask)
        assert low.shape == ref.shape == (1, 1, 3 if multimask else 1, 256, 256)
        d_logits = np.abs(low - ref).max()
        sign = np.mean((low > 0) == (ref > 0))
        fg = [float(np.mean(v[0, 0, 0] > 0)) for v in (ref, low)]
        print(f"{source} {case} multimask={multimask}: max|d logits|={d_logits:.2e} "
              f"(max|logit|={np.abs(ref).max():.1f}) sign agreement={sign:.6f} "
              f"foreground ref/ours={fg[0]:.3f}/{fg[1]:.3f}")
        assert d_logits <= TOL, (source, case, multimask, d_logits)
        assert sign >= 0.999, (source, case, multimask, sign)
        assert np.mean(np.abs(ref) > 0.5) > 0.1  # decisive, not near zero
        if not multimask:  # decisive single masks: a boundary inside the frame
          assert all(0.05 <= f <= 0.95 for f in fg), (source, case, fg)
