"""Why candidate logits are bounded relative to their scale: conditioning.

A SimSAM candidate is decoded from {box, one click, the binary first mask as
mask prompt}. The end-to-end mirrors (`simsam_mirror.py`) see our float32
candidate logits differ from a float64 reference by up to ~3e-4 of their
scale (6.7e-2 on logits near 250). This test locates the difference stage by
stage on ONE candidate, against the official `segment_anything` decoder run
in float64 (a reference free of float32 rounding; its positional encoding
casts point coordinates to float32 and builds the grid in float32, both
patched to keep float64):

  dense (mask downscaling convs + LayerNorm2d + GELU), the two-way
  transformer's token and image outputs, mask token 0's hypernetwork output,
  the logits.

Findings (asserted here; tiny preset):
  * our float32 decoder is as close to the float64 reference as the official
    decoder run in float32 is, at every stage (within a factor 4 of its error,
    which is float32 rounding): no stage computes something different;
  * the logit error is proportional to the hypernetwork output scale (the
    random weights' `hyper_scale`): the scaled last hypernetwork layer
    multiplies the rounding of the transformer's mask token (~1e-6) into the
    logits, while the upstream stages do not depend on it;
  * relative to max |logit| the error stays ~1e-5 (<= 1e-4).
With the float32 casts of our decoder switched to float64 (a test-only
patch: float64 compute, parameters and attention), the same candidate agrees
with the float64 official decoder to rounding at every stage (asserted
<= 1e-10 of the logits' scale; measured 1.8e-14 on the logits here, and
4e-13 on tiny_1024 with the mirrors' weights and real images, hyper_scale
100). So the
absolute gap is float32 rounding amplified by random, scaled weights, not a
difference of layout, epsilon, GELU or padding; the mirrors bound candidate
logits at 1e-3 of max(1, |logit|).
"""

import copy

import numpy as np
import pytest
import torch

import torch_reference as tr
from simsam_jax.checkpoint import convert_checkpoint, load_model
from simsam_jax.modeling import get_preset

WEIGHT_SEED = 4
INPUT_SEED = 6
STAGES = ("dense", "tokens", "image", "hyper", "logits")


def _float64(official):
  """A float64 copy of an official Sam whose prompt encoder stays float64."""
  m = copy.deepcopy(official).double()
  pe = m.prompt_encoder.pe_layer
  encode = pe._pe_encoding  # pylint: disable=protected-access

  def with_coords(coords, image_size):  # the official code casts to float32 here
    c = coords.clone().double()
    c[..., 0] = c[..., 0] / image_size[1]
    c[..., 1] = c[..., 1] / image_size[0]
    return encode(c)

  def grid(size):  # the official code builds the grid in float32
    h, w = size
    y = (torch.arange(h, dtype=torch.float64) + 0.5) / h
    x = (torch.arange(w, dtype=torch.float64) + 0.5) / w
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return encode(torch.stack([xx, yy], dim=-1)).permute(2, 0, 1)

  pe.forward_with_coords = with_coords
  pe.forward = grid
  return m


def _official_stages(model, emb, click, label, box, mask):
  """One candidate through an official Sam in its own dtype -> stage arrays."""
  dt = next(model.parameters()).dtype
  cap = {}
  hooks = [model.prompt_encoder.mask_downscaling.register_forward_hook(
               lambda m, i, o: cap.__setitem__("dense", o)),
           model.mask_decoder.transformer.register_forward_hook(
               lambda m, i, o: cap.__setitem__("tf", o)),
           model.mask_decoder.output_hypernetworks_mlps[0].register_forward_hook(
               lambda m, i, o: cap.__setitem__("hyper", o))]
  with torch.no_grad():
    sparse, dense = model.prompt_encoder(
        points=(torch.tensor([[click]], dtype=dt), torch.tensor([[label]])),
        boxes=torch.tensor(box, dtype=dt)[None],
        masks=torch.as_tensor(mask, dtype=dt)[None, None])
    low, _ = model.mask_decoder(
        image_embeddings=emb.to(dt), image_pe=model.prompt_encoder.get_dense_pe().to(dt),
        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
        multimask_output=False)
  for h in hooks:
    h.remove()
  tokens, image = cap["tf"]
  out = {"dense": cap["dense"][0].permute(1, 2, 0), "tokens": tokens[0], "image": image[0],
         "hyper": cap["hyper"][0], "logits": low[0, 0]}
  return {k: v.double().numpy() for k, v in out.items()}


def _jax_stages(model, emb, click, label, box, mask, dtype=np.float32):
  """The same candidate through our decoder's modules (inputs in `dtype`)."""
  import jax.numpy as jnp
  e = jnp.asarray(emb[0].permute(1, 2, 0).numpy(), dtype)
  enc, dec = model.prompt_encoder, model.mask_decoder
  sparse, dense = enc(jnp.asarray([click], dtype), jnp.int32([label]),
                      jnp.asarray(box, dtype), jnp.asarray(mask, dtype))
  pe = enc.dense_positional_encoding()
  g, _, c = e.shape
  tokens = jnp.concatenate([dec.iou_token.embedding[...], dec.mask_tokens.embedding[...],
                            sparse], 0)
  hs, src = dec.transformer((e + dense).reshape(g * g, c), pe.reshape(g * g, c), tokens)
  masks, _ = dec(e, pe, sparse, dense)
  out = {"dense": dense, "tokens": hs, "image": src,
         "hyper": dec.output_hypernetworks_mlps[0](hs[1]), "logits": masks[0]}
  return {k: np.asarray(v, np.float64) for k, v in out.items()}


def _errors(hyper_scale, tmp_path, prompt=None, ours_float64=None):
  """{decoder: {stage: max |difference| from the float64 official decoder}},
  max |logit|, and the candidate's (click, label, mask prompt).

  prompt: the (click, label, mask) to decode; None derives them from this
  model's first mask (its most uncertain low-res pixel as the click).
  ours_float64: a function making our loaded model compute in float64; then
  only that model is compared.
  """
  config = get_preset("tiny")
  s = config.image_size
  rng = np.random.default_rng(INPUT_SEED)
  x = torch.from_numpy(rng.normal(size=(1, 3, s, s)).astype(np.float32))
  box = np.float32([30, 40, 120, 130])
  official = tr.randomize_(tr.official_sam(config), WEIGHT_SEED, hyper_scale)
  with torch.no_grad():
    emb = official.image_encoder(x)
  tr.balance_single_mask_(official, [x], [box], embeddings=[emb])
  # The first (box-only) mask, its most uncertain pixel as the click.
  with torch.no_grad():
    sparse, dense = official.prompt_encoder(points=None, boxes=torch.from_numpy(box)[None],
                                            masks=None)
    first, _ = official.mask_decoder(
        image_embeddings=emb, image_pe=official.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
        multimask_output=False)
  first = first[0, 0].numpy()
  assert 0.05 <= np.mean(first > 0) <= 0.95, np.mean(first > 0)  # decisive
  if prompt is None:
    m = first.shape[0]
    mask = (first > 0).astype(np.float32)
    iy, ix = np.unravel_index(np.argmin(np.abs(first)), first.shape)
    prompt = ([float(ix * s / m), float(iy * s / m)], int(1 - mask[iy, ix]), mask)
  click, label, mask = prompt
  path = tr.save_official_pth(official, str(tmp_path / f"sam_{hyper_scale:g}.pth"))
  convert_checkpoint(path, str(tmp_path / f"ckpt_{hyper_scale:g}"))
  ours = load_model(str(tmp_path / f"ckpt_{hyper_scale:g}"))
  ref = _official_stages(_float64(official), emb.double(), click, label, box, mask)
  if ours_float64 is not None:
    rows = {"ours float64": _jax_stages(ours_float64(ours), emb, click, label, box, mask,
                                        np.float64)}
    return {"ours float64": {k: float(np.abs(rows["ours float64"][k] - ref[k]).max())
                             for k in STAGES}}, float(np.abs(ref["logits"]).max()), prompt
  rows = {"official float32": _official_stages(official, emb, click, label, box, mask),
          "ours float32": _jax_stages(ours, emb, click, label, box, mask)}
  errors = {name: {k: float(np.abs(r[k] - ref[k]).max()) for k in STAGES}
            for name, r in rows.items()}
  scale = float(np.abs(ref["logits"]).max())
  fg = float(np.mean(ref["logits"] > 0))
  for name, e in errors.items():
    print(f"hyper_scale={hyper_scale:g} max|logit|={scale:.1f} fg={fg:.2f} {name}: "
          + " ".join(f"{k}={v:.1e}" for k, v in e.items()))
  assert 0.05 <= fg <= 0.95, fg  # the candidate is decisive too
  return errors, scale, prompt


def test_candidate_gap_is_float32_rounding_scaled_by_the_hypernetwork(tmp_path):
  results = {25.0: _errors(25.0, tmp_path)}
  results[100.0] = _errors(100.0, tmp_path, prompt=results[25.0][2])  # same candidate
  for h, (errors, scale, _) in results.items():
    ours, theirs = errors["ours float32"], errors["official float32"]
    for stage in STAGES:  # no stage differs beyond float32 rounding
      assert ours[stage] <= 4 * theirs[stage] + 1e-12, (h, stage, ours, theirs)
    assert ours["logits"] <= 1e-4 * scale, (h, ours, scale)
  # Upstream of the hypernetwork the stages do not depend on its scale; the
  # logits' error grows with it (4x the scale: ~4x the error, 2-8x allowed).
  low, high = results[25.0][0]["ours float32"], results[100.0][0]["ours float32"]
  for stage in ("dense", "tokens", "image"):
    assert high[stage] == pytest.approx(low[stage], rel=1e-6), stage
  assert 2 <= high["logits"] / low["logits"] <= 8, (low, high)
  assert 2 <= results[100.0][1] / results[25.0][1] <= 8  # the logits' scale too


def _attend64(q, k, v, policy, bias=None, scale=None):
  """Attention in float64 (`jax.nn.dot_product_attention` takes its softmax
  in float32 whatever the input dtype)."""
  import jax
  import jax.numpy as jnp
  del policy, bias, scale  # the decoder uses neither
  logits = jnp.einsum("tnd,snd->nts", q, k) / np.sqrt(q.shape[-1])
  return jnp.einsum("nts,snd->tnd", jax.nn.softmax(logits, -1), v)


def test_float64_on_both_sides_agrees_to_rounding(tmp_path, monkeypatch):
  """Our decoder with its float32 casts switched to float64 (a test-only
  patch) against the official decoder in float64: the gap is gone."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from simsam_jax.modeling import layers, mask_decoder, policy, prompt_encoder, transformer

  class Jnp64:  # jax.numpy with float32 meaning float64
    def __getattr__(self, name):
      return jnp.float64 if name == "float32" else getattr(jnp, name)

  def to_float64(model):
    graphdef, state = nnx.split(model)
    state = jax.tree.map(lambda a: a.astype(jnp.float64)
                         if jnp.issubdtype(a.dtype, jnp.floating) else a, state)
    model = nnx.merge(graphdef, state)
    for _, module in nnx.iter_modules(model):
      if isinstance(module, (nnx.Conv, nnx.Linear, nnx.LayerNorm)):
        module.dtype = module.param_dtype = jnp.float64
    return model

  with jax.enable_x64(True):
    for module in (prompt_encoder, mask_decoder, layers):
      monkeypatch.setattr(module, "jnp", Jnp64())
    monkeypatch.setitem(policy.PRECISIONS, "float32", np.dtype(np.float64))
    monkeypatch.setattr(transformer, "attend", _attend64)
    errors, scale, _ = _errors(100.0, tmp_path, ours_float64=to_float64)
  ours = errors["ours float64"]
  print(f"float64 both sides, max|logit|={scale:.1f}:",
        " ".join(f"{k}={v:.1e}" for k, v in ours.items()))
  assert max(ours.values()) <= 1e-10 * max(1.0, scale), ours
