"""SimSAM in JAX vs an independent PyTorch mirror of the published data flow.

The mirror (`simsam_mirror.py`) runs on Hugging Face `SamModel`; the JAX
engine runs on the converted `save_pretrained` output of the same random
weights (preset `tiny_1024`: SAM's full 1024 / 64 / 256 geometry with a
two-block encoder). The hypernetwork output is scaled and balanced so masks
are decisive and two-signed (`torch_reference.balance_single_mask_`).
Images are the real samples, resized to 256 x 256 as the paper does, with
the ground-truth extremity box. The mirror decodes the K candidates with a
float64 copy of the same weights (most float32 rounding removed: these
random decoders amplify it once the mask prompt is given). End to end, every
image must give the same click set and labels, candidate logits within 1e-3
of their scale, max(1, max |logit|) (up to ~250 here; the largest absolute
difference seen is 6.7e-2, i.e. 2.7e-4 of the scale: float32 rounding
amplified by the random, scaled hypernetwork, not a difference of the
decoders, see test_candidate_conditioning.py and
`simsam_mirror.assert_matches`) and the same chosen candidate; near-ties broken differently by float rounding are
accepted only as such (`simsam_mirror.assert_matches`). Flipping the click
labels must fail these checks by a wide margin (mutation test).
"""

import copy

import numpy as np
import pytest
import torch
import jax.numpy as jnp
from PIL import Image

import simsam_mirror as mirror
from data_fixtures import shared_sample_files
import torch_reference as tr
from simsam_jax import processing
from simsam_jax.checkpoint import convert_checkpoint, load_model
from simsam_jax.modeling import get_preset
from simsam_jax.simsam import SimSam, SimSamConfig, pipeline
from simsam_jax.simsam.aggregation import iou_medoid
from simsam_jax.simsam.clicks import CLICK_STRATEGIES, topk_clicks

K = 50
SIZE = 256


def _sample_pairs(root):
  """(name, image path, [mask paths]) for every real sample image."""
  return [(name, image, masks) for name, _, image, masks in shared_sample_files(root)]


def _at_256(image_path, mask_paths):
  """Paper protocol: 256 x 256 image (PIL's default filter), mask > 0, box."""
  image = Image.fromarray(processing.load_image(image_path)).resize((SIZE, SIZE))
  gt = np.zeros((SIZE, SIZE), bool)
  for p in mask_paths:
    m = processing.load_image(p)[..., 0] > 0
    gt |= np.array(Image.fromarray(m).resize((SIZE, SIZE), Image.NEAREST))
  ys, xs = np.nonzero(gt)
  box = ([xs.min(), ys.min(), xs.max(), ys.max()] if len(xs) else [0, 0, SIZE, SIZE])
  return np.asarray(image), gt, np.asarray(box, np.float32)


@pytest.fixture(scope="module")
def setup(shared_data, tmp_path_factory):
  config = get_preset("tiny_1024")
  samples = [(name,) + _at_256(img, masks) for name, img, masks in _sample_pairs(shared_data)]
  assert len(samples) >= 40
  # Balance the random decoder on a third of the images, so that masks have
  # boundaries (see torch_reference.balance_single_mask_).
  subset = samples[::3]
  pixels = [processing.preprocess(s[1])[0][None].transpose(0, 3, 1, 2) for s in subset]
  official, hf = tr.paired_models(
      config, seed=3, hyper_scale=100.0,
      balance_on=(pixels, [s[3] * (1024 / SIZE) for s in subset]))
  folder = tr.save_hf_folder(hf, str(tmp_path_factory.mktemp("hf") / "hf"))
  dst = str(tmp_path_factory.mktemp("ckpt") / "ckpt")
  convert_checkpoint(folder, dst)
  model = load_model(dst)
  engine = SimSam(model, SimSamConfig(k=K))
  return {"samples": samples, "hf": hf, "hf64": copy.deepcopy(hf).double(),
          "engine": engine, "model": model}


def _mirror(setup, image, box):
  """Mirror result for one sample, computed once per module."""
  cache = setup.setdefault("mirror_cache", {})
  key = (image.tobytes(), tuple(box.tolist()))
  if key not in cache:
    pixels, info = processing.preprocess(image)
    pv = torch.from_numpy(pixels[None]).permute(0, 3, 1, 2)
    cache[key] = (mirror.simsam(setup["hf"], pv, box, info.resized_size,
                                info.original_size, K, decoder=setup["hf64"]), info)
  return cache[key]


def test_same_first_logits_give_the_same_clicks(setup):
  checked, labels_seen = 0, set()
  for name, image, _, box in setup["samples"][::4]:
    ref, info = _mirror(setup, image, box)
    probs = pipeline.first_probabilities(jnp.asarray(ref["first_logits"].numpy()), info)
    np.testing.assert_allclose(np.asarray(probs), ref["probs"].numpy(), atol=1e-6)
    clicks, labels = topk_clicks(probs, K, None)
    ours = {(int(x), int(y), int(l)) for (x, y), l in zip(np.asarray(clicks), np.asarray(labels))}
    theirs = {(int(x), int(y), int(l)) for (x, y), l in zip(ref["clicks"].numpy(), ref["labels"].numpy())}
    assert ours == theirs, name
    labels_seen |= {l for *_, l in theirs}
    checked += 1
  assert checked >= 10
  assert labels_seen == {0, 1}  # positive and negative clicks both occur


def test_same_candidates_give_the_same_choice(setup):
  choices = set()
  for name, image, _, box in setup["samples"][1::4]:
    ref, _ = _mirror(setup, image, box)
    result = iou_medoid(jnp.asarray(ref["candidates"].numpy()), None)
    assert int(result.chosen) == ref["chosen"], name
    np.testing.assert_allclose(np.asarray(result.scores), ref["scores"].numpy(), atol=1e-6)
    choices.add(ref["chosen"])
  assert len(choices) > 1  # the medoid is not always candidate 0


def test_end_to_end_on_every_real_image(setup):
  engine = setup["engine"]
  worst, nontrivial, ties, near_ties, choices = {}, 0, [], [], set()
  for name, image, _, box in setup["samples"]:
    ref, info = _mirror(setup, image, box)
    out = engine.segment(image, box)
    assert np.asarray(out.mask).shape == ref["mask"].shape == (SIZE, SIZE)
    d = mirror.compare(out, ref, K)
    mirror.assert_matches(d, name)
    if d["chosen"][0] != d["chosen"][1]:
      ties.append((name, d["chosen_score_gap"]))
    if d["near_tie"]:  # explained by assert_matches
      near_ties.append((name, d["cutoff_gap"], d["label_gap"], d["mask_prompt_cells"]))
    choices.add(d["chosen_index"][1])
    for key in ("mask_agreement", "label_agreement"):
      worst[key] = min(worst.get(key, 1.0), d[key])
    for key in ("max_logit_delta", "relative_logit_delta"):
      if not d["mask_prompt_cells"]:  # otherwise not compared, see assert_matches
        worst[key] = max(worst.get(key, 0.0), d[key])
    nontrivial += 0.01 < ref["mask"].numpy().mean() < 0.99
    print(f"{name}: agreement {d['mask_agreement']:.5f} chosen {d['chosen_index']} "
          f"logits {d['max_logit_delta']:.1e} first logits {d['first_logit_delta']:.1e} "
          f"cut-off gap {d['cutoff_gap']:.1e} label gap {d['label_gap']:.1e} "
          f"mask prompt cells {d['mask_prompt_cells']}")
  print(f"over {len(setup['samples'])} images: {worst}; choice ties {ties}; "
        f"near ties (cut-off gap, label gap, mask prompt cells) {near_ties}")
  # Each near-tie was explained above (assert_matches bounds its gap). How often
  # float rounding lands on one (the K-th error, or p = 0.5 at a click or a
  # mask-prompt pixel) depends on the CPU and its thread count (CI saw 3 of 43
  # images at cut-off gaps of 2-4e-6; single-threaded torch and XLA here, one
  # cut-off and one mask-prompt tie), so the count bound is loose for them and
  # tight for the final choice. Not every image picks candidate 0; most final
  # masks have a boundary (not vacuous).
  assert len(ties) <= 0.05 * len(setup["samples"]), ties
  assert len(near_ties) <= 0.15 * len(setup["samples"]), near_ties
  assert len(choices) > 1
  assert nontrivial >= 0.75 * len(setup["samples"]), nontrivial


def test_flipped_click_labels_fail_by_a_wide_margin(setup, monkeypatch):
  """Mutation: positive clicks where SAM said foreground, and vice versa."""
  topk = CLICK_STRATEGIES.get("topk")

  def flipped(*args, **kwargs):
    clicks, labels = topk(*args, **kwargs)
    return clicks, 1 - labels

  monkeypatch.setitem(CLICK_STRATEGIES._entries, "topk", flipped)  # pylint: disable=protected-access
  engine = SimSam(setup["model"], SimSamConfig(k=K))  # traces the mutation
  mask_agreement, choice_matches = [], 0
  samples = setup["samples"][::10]
  for name, image, _, box in samples:
    ref, _ = _mirror(setup, image, box)
    d = mirror.compare(engine.segment(image, box), ref, K)
    with pytest.raises(AssertionError):
      mirror.assert_matches(d, name)
    assert d["label_agreement"] == 0.0, (name, d)  # every label disagrees
    assert d["max_logit_delta"] == np.inf  # no candidate can be matched
    mask_agreement.append(d["mask_agreement"])
    choice_matches += d["chosen"][0] == d["chosen"][1]
  print(f"flipped labels: mask agreement {np.round(mask_agreement, 3)}")
  assert choice_matches == 0
