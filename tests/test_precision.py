"""The precision policy: bfloat16 compute with float32 weights, a run option.

* The parameters stay float32 (and are shared, not copied, between
  precisions); the XLA program takes them float32 and feeds bfloat16 operands
  to every dot and convolution, while the outputs are float32.
* Precision is not architecture: not a `SamConfig` field, not in a
  checkpoint's sidecar.
* bfloat16 vs float32 on every real sample image, paper protocol (256 x 256,
  `simsam_jax.data.protocols`), with decisive random weights (the official
  model randomised, its hypernetwork scaled and balanced as in the mirror
  test, then converted): SAM masks agree on >= 99 % of the pixels on average
  (>= 97 % on every image), SimSAM masks on >= 95 % on average; the measured
  figures are printed. The goals for trained weights (>= 99 % on every image,
  >= 98 %) are not met by these random weights (see the test).
* Bad values are refused before any work, naming the flag.
"""

import dataclasses
import json
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

import torch_reference as tr
from data_fixtures import shared_sample_files
from simsam_jax import processing, segment
from simsam_jax.checkpoint import convert_checkpoint, load_model, read_sidecar, save_checkpoint
from simsam_jax.data import protocols
from simsam_jax.modeling import (PRECISIONS, Policy, SamConfig, build_sam, get_preset,
                                 make_sam_functions, with_policy)
from simsam_jax.simsam import SimSam, SimSamConfig

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
K = 16  # SimSAM clicks in the real-image check (K = 50 triples its CPU time)


def _leaves(model):
  return jax.tree.leaves(nnx.state(model))


def test_parameters_stay_float32_and_are_shared():
  model = build_sam(get_preset("tiny"), 0)
  bf16 = with_policy(model, "bfloat16")
  assert bf16.policy == Policy("bfloat16") and model.policy == Policy("float32")
  assert {x.dtype for x in _leaves(bf16)} == {np.dtype(np.float32)}
  assert all(a is b for a, b in zip(_leaves(model), _leaves(bf16)))
  assert with_policy(bf16, "float32").policy.precision == "float32"
  assert with_policy(model) is model
  built = build_sam(get_preset("tiny"), 0, dtype=jnp.bfloat16)  # a dtype works too
  assert built.policy.precision == "bfloat16"
  for a, b in zip(_leaves(model), _leaves(built)):
    np.testing.assert_array_equal(a, b)  # same (config, seed) -> same weights


def _dtype(tensor_type: str) -> str:
  return tensor_type.split("x")[-1]


def test_xla_program_casts_float32_weights_to_bfloat16_operands():
  """StableHLO of the jitted entry points: float32 arguments (weights stay
  float32 in memory), bfloat16 operands on every dot and convolution but the
  float32 positional encoding, float32 results returned."""
  model = build_sam(get_preset("tiny"), 0)
  pixels = jnp.zeros((1, 160, 160, 3))
  boxes = jnp.array([[[10.0, 20.0, 90.0, 100.0]]])
  masks = jnp.zeros((1, 1, 40, 40))
  for precision in PRECISIONS:
    fns, state = make_sam_functions(model, dtype=precision)
    embedding = jax.eval_shape(fns.encode, state, pixels)
    programs = [fns.encode.lower(state, pixels).as_text(),
                fns.decode.lower(state, embedding, None, None, boxes, masks).as_text()]
    for text in programs:
      main = re.search(r"func\.func public @main\(([^\n]*)\) -> \(([^\n]*)\)", text)
      arguments = re.findall(r"%arg\d+: tensor<([^>]*)>", main.group(1))
      assert len(arguments) > 10
      assert {_dtype(a) for a in arguments} <= {"f32", "i32"}
      assert "bf16" not in main.group(2)
      ops = re.findall(r"stablehlo\.(?:dot_general|convolution)[^\n]*"
                       r": \(tensor<([^>]*)>, tensor<([^>]*)>\) -> tensor<([^>]*)>", text)
      assert len(ops) > 10
      # The only float32 products in bfloat16 are the random-Fourier features
      # ((..., 2) x (2, C/2), at HIGHEST precision).
      fourier = [op for op in ops if op[1] == "2x16xf32"]
      others = {_dtype(t) for op in ops if op not in fourier for t in op[:2]}
      assert others == ({"bf16"} if precision == "bfloat16" else {"f32"})
      assert all(_dtype(t) == "f32" for op in fourier for t in op)


def test_precision_is_not_architecture(tmp_path):
  names = {f.name for f in dataclasses.fields(SamConfig)}
  assert not names & {"precision", "dtype", "param_dtype", "attention_impl"}
  config = get_preset("tiny")
  model = build_sam(config, 0, dtype="bfloat16")
  save_checkpoint(str(tmp_path / "ckpt"), nnx.state(model), model.config,
                  {"format": "test"})
  sidecar = read_sidecar(str(tmp_path / "ckpt"))
  assert sidecar["preset"] == "tiny"
  assert "precision" not in json.dumps(sidecar, default=str)
  loaded = load_model(str(tmp_path / "ckpt"), dtype="bfloat16")
  assert loaded.config == config and loaded.policy.precision == "bfloat16"
  assert {x.dtype for x in _leaves(loaded)} == {np.dtype(np.float32)}


# -- bfloat16 vs float32 on the real images -----------------------------------


def _paper_examples(root):
  """Every real sample, paper protocol: 256 x 256 image, mask, box."""
  examples = []
  for name, dataset, image_path, mask_paths in shared_sample_files(root):
    raw = np.max([processing.load_image(p)[..., 0] for p in mask_paths], axis=0)
    with Image.open(mask_paths[0]) as first:
      mode = "1" if first.mode == "1" else "L"  # what the dataset builders store
    example = {"id": name, "image": processing.load_image(image_path), "mask": raw,
               "mask_mode": mode,
               "source_format": "tiff" if image_path.suffix == ".tif" else "png"}
    examples.append(protocols.prepare(example, "paper", dataset))
  return examples


@pytest.fixture(scope="module")
def decisive_model(shared_data, tmp_path_factory):
  """tiny_1024 with the official model's random weights, scaled and balanced
  on a third of the images exactly as the mirror test, converted; plus the
  images."""
  config = get_preset("tiny_1024")
  examples = _paper_examples(shared_data)
  assert len(examples) >= 40
  subset = examples[::3]
  pixels = [processing.preprocess(e.image)[0][None].transpose(0, 3, 1, 2) for e in subset]
  boxes = [np.asarray(e.box, np.float32) * (config.image_size / 256) for e in subset]
  official = tr.randomize_(tr.official_sam(config), seed=3, hyper_scale=100.0)
  tr.balance_single_mask_(official, pixels, boxes)
  folder = tmp_path_factory.mktemp("precision")
  dst = str(folder / "ckpt")
  convert_checkpoint(tr.save_official_pth(official, str(folder / "sam.pth")), dst)
  return load_model(dst), examples


def test_bfloat16_agrees_with_float32_on_every_real_image(decisive_model):
  model, examples = decisive_model
  engines = {p: SimSam(model, SimSamConfig(k=K), dtype=p) for p in PRECISIONS}
  sam_agree, simsam_agree, sam_fg, simsam_fg, click_overlap = [], [], [], [], []
  same_chosen = 0
  clicks = lambda o: {(int(x), int(y), int(l)) for (x, y), l in zip(o.clicks, o.labels)}
  # The CVC PNG copies are pixel-identical to the TIFF frames (PROVENANCE.md):
  # identical inputs to the same compiled programs give identical outputs, so
  # each distinct (image, box) runs once and every image still enters the
  # statistics below.
  runs = {}
  for example in examples:
    key = (example.image.shape, example.image.tobytes(), np.asarray(example.box).tobytes())
    if key not in runs:
      pixels, info = processing.preprocess(example.image)
      runs[key] = {p: jax.device_get(e.run(pixels, example.box, info))
                   for p, e in engines.items()}
    out = runs[key]
    f32, bf16 = out["float32"], out["bfloat16"]
    assert f32.mask.shape == bf16.mask.shape == (256, 256)
    for name in ("low_res_logits", "candidate_logits", "candidate_iou", "scores",
                 "agreement", "first_low_res_logits", "first_iou"):
      assert getattr(bf16, name).dtype == np.float32, name
    sam_agree.append(np.mean(f32.sam_mask == bf16.sam_mask))
    simsam_agree.append(np.mean(f32.mask == bf16.mask))
    sam_fg.append(f32.sam_mask.mean())
    simsam_fg.append(f32.mask.mean())
    same_chosen += int(f32.chosen == bf16.chosen)
    a, b = clicks(f32), clicks(bf16)
    click_overlap.append(len(a & b) / len(a | b))
  n = len(examples)
  sam_agree, simsam_agree, sam_fg, simsam_fg, click_overlap = map(
      np.asarray, (sam_agree, simsam_agree, sam_fg, simsam_fg, click_overlap))
  print(f"\nbfloat16 vs float32 on {n} real images (tiny_1024, K={K}): SAM mask "
        f"agreement min {100 * sam_agree.min():.3f} % mean {100 * sam_agree.mean():.3f} %; "
        f"SimSAM mask agreement min {100 * simsam_agree.min():.3f} % mean "
        f"{100 * simsam_agree.mean():.3f} %; same chosen candidate {same_chosen}/{n}; "
        f"click sets (x, y, label) Jaccard mean {click_overlap.mean():.3f}; SAM "
        f"foreground {100 * sam_fg.min():.1f}-{100 * sam_fg.max():.1f} %, SimSAM "
        f"{100 * simsam_fg.min():.1f}-{100 * simsam_fg.max():.1f} %")
  # Masks have boundaries (with these weights the box-only SAM mask is a
  # periodic pattern of the upscaling kernels on every image; the SimSAM
  # masks, decoded with clicks and mask prompts, depend on the image).
  assert np.all((sam_fg > 0.05) & (sam_fg < 0.95))
  assert np.mean((simsam_fg > 0.05) & (simsam_fg < 0.95)) >= 0.5
  # Measured with these weights (after the parity fixtures were balanced):
  # SAM min 97.5 % / mean 99.6 %, SimSAM mean 96.8 %. The goals for trained
  # weights (SAM >= 99 % on every image, SimSAM >= 98 % on average) are NOT
  # met by these random weights, whose near-ties bfloat16 rounding flips far
  # more often; these bounds guard the measured level against regressions
  # (a bfloat16 softmax, LayerNorm or logit path drops them far lower).
  assert sam_agree.mean() >= 0.99 and sam_agree.min() >= 0.97
  assert simsam_agree.mean() >= 0.95


# -- bad input -----------------------------------------------------------------


def test_unknown_precision_is_named():
  with pytest.raises(ValueError, match="unknown precision 'fp16'; use one of float32, bfloat16"):
    Policy("fp16")
  with pytest.raises(ValueError, match="unknown precision 'float16'"):
    build_sam(get_preset("tiny"), dtype=jnp.float16)
  # Checked before the checkpoint folder is read.
  with pytest.raises(ValueError, match="unknown precision"):
    load_model("/nonexistent/checkpoint", dtype="fp16")
  with pytest.raises(ValueError, match="unknown precision"):
    SimSam(build_sam(get_preset("tiny"), 0), SimSamConfig(k=2), dtype="fp16")


def _cli(module, *args):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=120)


def test_segment_cli_rejects_unknown_precision(tmp_path):
  proc = _cli("simsam_jax.segment", "--checkpoint=random:tiny",
              "--image=synthetic:1:64x80", f"--out={tmp_path / 'mask.png'}",
              "--precision=fp16")
  assert proc.returncode == 1, proc.stderr
  assert "--precision='fp16': unknown precision" in proc.stderr
  assert list(tmp_path.iterdir()) == []


def test_demo_cli_rejects_unknown_precision(tmp_path):
  proc = _cli("simsam_jax.demo", f"--workdir={tmp_path / 'run'}", "--precision=fp16")
  assert proc.returncode == 1, proc.stderr
  assert "--precision='fp16': unknown precision" in proc.stderr
  assert list(tmp_path.iterdir()) == []


def test_evaluate_rejects_unknown_precision_before_any_work(tmp_path):
  from simsam_jax import evaluate
  from simsam_jax.evaluation.config import get_eval_config
  config = get_eval_config("phantom,runlocal")
  config.data_dir = str(tmp_path / "tfds")
  config.precision = "fp16"
  with pytest.raises(evaluate.EvaluationError, match=r"--config\.precision='fp16'"):
    evaluate.evaluate(config, str(tmp_path / "run"), progress=False)
  config.precision, config.attention_impl = "float32", "flash"
  with pytest.raises(evaluate.EvaluationError, match=r"--config\.attention_impl='flash'"):
    evaluate.evaluate(config, str(tmp_path / "run"), progress=False)
  assert list(tmp_path.iterdir()) == []


def test_segment_json_records_precision(tmp_path):
  out = tmp_path / "mask.png"
  metadata = segment.segment(checkpoint="random:tiny", image="synthetic:1:64x80",
                             out=str(out), method="sam", precision="bfloat16")
  written = json.loads(out.with_suffix(".json").read_text())
  assert written["precision"] == metadata["precision"] == "bfloat16"
  assert written["attention_impl"] == "xla"
