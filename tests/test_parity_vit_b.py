"""Full-size check: ViT-B at 1024 x 1024 from both checkpoint formats.

Tolerances are those of a 12-block ViT in float32: max |delta logits| <= 1e-3
and >= 99.9% agreement of the logits' sign.
"""


import numpy as np
import pytest
import torch

import torch_reference as tr
from simsam_jax.checkpoint import convert_checkpoint, load_model
from simsam_jax.modeling import get_preset, make_sam_functions


@pytest.mark.slow
def test_vit_b_1024_both_formats(tmp_path):
  config = get_preset("vit_b")
  official, hf = tr.paired_models(config, seed=11)
  convert_checkpoint(tr.save_official_pth(official, str(tmp_path / "sam_vit_b.pth")),
                     str(tmp_path / "from_pth"))
  convert_checkpoint(tr.save_hf_folder(hf, str(tmp_path / "hf")), str(tmp_path / "from_hf"))
  rng = np.random.default_rng(5)
  pixels = rng.normal(size=(1, 1024, 1024, 3)).astype(np.float32)
  box = np.array([[[300.0, 260.0, 700.0, 650.0]]], np.float32)  # (B, P, 4)
  pts = np.array([[[[480.0, 500.0]]]], np.float32)  # (B, P, N, 2)
  lbl = np.array([[[1]]], np.int32)

  fns = None
  for source, ref_model in (("from_pth", official), ("from_hf", hf)):
    model = load_model(str(tmp_path / source))
    if fns is None:
      fns, state = make_sam_functions(model)
    else:  # same architecture: reuse the compiled functions with the new state
      from flax import nnx
      state = nnx.state(model)
    emb = fns.encode(state, pixels)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    with torch.no_grad():
      if source == "from_pth":
        ref_emb = official.image_encoder(x)
      else:
        ref_emb = hf.get_image_embeddings(x)
    d_emb = np.abs(np.asarray(emb) - ref_emb.permute(0, 2, 3, 1).numpy()).max()
    assert d_emb <= 1e-3, (source, d_emb)
    for multimask in (False, True):
      low, iou = fns.decode(state, emb, pts, lbl, box, None, multimask_output=multimask)
      with torch.no_grad():
        if source == "from_pth":
          sparse, dense = official.prompt_encoder(
              points=(torch.from_numpy(pts[0]), torch.from_numpy(lbl[0])),
              boxes=torch.from_numpy(box[0]), masks=None)
          ref_low, ref_iou = official.mask_decoder(
              image_embeddings=ref_emb, image_pe=official.prompt_encoder.get_dense_pe(),
              sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
              multimask_output=multimask)
          ref_low, ref_iou = ref_low[None], ref_iou[None]
        else:
          out = hf(image_embeddings=ref_emb, input_points=torch.from_numpy(pts),
                   input_labels=torch.from_numpy(lbl), input_boxes=torch.from_numpy(box),
                   multimask_output=multimask)
          ref_low, ref_iou = out.pred_masks, out.iou_scores
      ref_low = ref_low.detach().numpy()
      low = np.asarray(low)
      assert low.shape == ref_low.shape == (1, 1, 3 if multimask else 1, 256, 256)
      d_logits = np.abs(low - ref_low).max()
      sign = np.mean((low > 0) == (ref_low > 0))
      print(f"{source} multimask={multimask}: max|d emb|={d_emb:.2e} "
            f"max|d logits|={d_logits:.2e} sign agreement={sign:.6f} "
            f"max|d iou|={np.abs(np.asarray(iou) - ref_iou.detach().numpy()).max():.2e}")
      assert d_logits <= 1e-3, (source, multimask, d_logits)
      assert sign >= 0.999, (source, multimask, sign)
      assert np.mean(np.abs(ref_low) > 0.5) > 0.1  # decisive, not near zero
