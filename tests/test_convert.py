"""Converter: format detection, key tables, error paths, CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from flax import nnx

import torch_reference as tr
from simsam_jax.checkpoint import (CheckpointError, config_from_hf, convert_checkpoint,
                                   hf_sam_config, infer_config, read_checkpoint)
from simsam_jax.modeling import PRESETS, abstract_sam, get_preset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  """A random tiny SAM as official .pth, HF folder and bare HF safetensors."""
  config = get_preset("tiny")
  official, hf = tr.paired_models(config, seed=3)
  d = tmp_path_factory.mktemp("src")
  pth = tr.save_official_pth(official, str(d / "sam_tiny.pth"))
  folder = tr.save_hf_folder(hf, str(d / "hf_tiny"))
  return {"config": config, "pth": pth, "folder": folder,
          "safetensors": os.path.join(folder, "model.safetensors"),
          "state_dict": official.state_dict(), "dir": d}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_builds_abstractly(preset):
  model = abstract_sam(get_preset(preset))
  leaves = [v for _, v in nnx.to_flat_state(nnx.state(model))]
  assert leaves and all(np.dtype(v.get_value().dtype) == np.float32 for v in leaves)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_hf_config_round_trip(preset):
  """Our config -> transformers.SamConfig -> config.json dict -> our config."""
  config = get_preset(preset)
  hf = hf_sam_config(config)
  assert config_from_hf(hf.to_dict()) == config
  assert hf.mask_decoder_config.layer_norm_eps == config.transformer_layer_norm_eps
  if preset.startswith("tiny"):  # Hugging Face builds the same parameter shapes
    from transformers import SamModel
    ours = nnx.state(abstract_sam(config))
    n_ours = sum(int(np.prod(v.get_value().shape)) for _, v in nnx.to_flat_state(ours))
    n_hf = sum(p.numel() for n, p in SamModel(hf).state_dict().items()
               if n != "shared_image_embedding.positional_embedding")  # a shared copy
    assert n_hf == n_ours


@pytest.mark.parametrize("preset,params", [("vit_b", 93_735_728), ("vit_l", 312_343_088),
                                           ("vit_h", 641_090_864)])
def test_official_parameter_counts(preset, params):
  # The official models (minus 6 pixel mean/std buffer values).
  state = nnx.state(abstract_sam(get_preset(preset)))
  assert sum(int(np.prod(v.get_value().shape)) for _, v in nnx.to_flat_state(state)) == params


def test_conv_transpose_layout_matches_pytorch():
  """PyTorch ConvTranspose2d (in, out, kh, kw) -> flax kernel (kh, kw, out, in),
  for flax's ConvTranspose and for the decoder's einsum UpConv2x2."""
  from simsam_jax.modeling.mask_decoder import UpConv2x2
  from simsam_jax.checkpoint.key_tables import LAYOUTS
  rng = np.random.default_rng(0)
  conv = torch.nn.ConvTranspose2d(6, 5, kernel_size=2, stride=2)
  with torch.no_grad():
    conv.weight.copy_(torch.from_numpy(rng.normal(size=(6, 5, 2, 2)).astype(np.float32)))
  x = rng.normal(size=(2, 6, 7, 3)).astype(np.float32)  # NCHW, odd sizes
  ref = conv(torch.from_numpy(x)).detach().permute(0, 2, 3, 1).numpy()
  layer = nnx.ConvTranspose(6, 5, kernel_size=(2, 2), strides=(2, 2), padding="VALID",
                            transpose_kernel=True, rngs=nnx.Rngs(0))
  layer.kernel.set_value(LAYOUTS["conv_transpose"](conv.weight.detach().numpy()))
  layer.bias.set_value(conv.bias.detach().numpy())
  ours = np.asarray(layer(x.transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(ours, ref, atol=1e-5)
  up = UpConv2x2(6, 5, rngs=nnx.Rngs(0))
  up.kernel.set_value(LAYOUTS["conv_transpose"](conv.weight.detach().numpy()))
  up.bias.set_value(conv.bias.detach().numpy())
  np.testing.assert_allclose(np.asarray(up(x.transpose(0, 2, 3, 1))), ref, atol=1e-5)
  # The permutation without transpose_kernel is wrong (a known porting trap).
  wrong = nnx.ConvTranspose(6, 5, kernel_size=(2, 2), strides=(2, 2), padding="VALID",
                            rngs=nnx.Rngs(0))
  wrong.kernel.set_value(np.transpose(conv.weight.detach().numpy(), (2, 3, 0, 1)))
  wrong.bias.set_value(conv.bias.detach().numpy())
  assert np.abs(np.asarray(wrong(x.transpose(0, 2, 3, 1))) - ref).max() > 1e-2


@pytest.mark.parametrize("kind,fmt", [("pth", "official_pth"), ("folder", "hf_folder"),
                                      ("safetensors", "hf_safetensors")])
def test_detects_format_and_architecture(sources, kind, fmt):
  src = read_checkpoint(sources[kind])
  assert src.format == fmt
  config = infer_config(src)
  expected = sources["config"]
  eps = 1e-5 if fmt == "official_pth" else 1e-6
  import dataclasses
  assert config == dataclasses.replace(expected, transformer_layer_norm_eps=eps)


def test_sidecar_records_source(sources, tmp_path):
  meta = convert_checkpoint(sources["pth"], str(tmp_path / "out"))
  with open(tmp_path / "out" / "simsam_jax.json") as f:
    sidecar = json.load(f)
  import hashlib
  sha = hashlib.sha256(open(sources["pth"], "rb").read()).hexdigest()
  assert sidecar["source"]["sha256"] == sha == meta["source"]["sha256"]
  assert sidecar["source"]["format"] == "official_pth"
  assert sidecar["preset"] == "tiny"
  assert sidecar["architecture"]["encoder"]["global_attn_indexes"] == [1]


def _assert_nothing_written(dst):
  assert not os.path.exists(dst)
  parent = os.path.dirname(dst)
  if os.path.isdir(parent):
    assert not [f for f in os.listdir(parent) if f.startswith("." + os.path.basename(dst))]


def _tampered_pth(sources, path, edit):
  sd = {k: v.clone() for k, v in sources["state_dict"].items()}
  edit(sd)
  torch.save(sd, path)
  return str(path)


def test_reports_every_problem_at_once(sources, tmp_path):
  def edit(sd):
    del sd["mask_decoder.iou_token.weight"]
    del sd["image_encoder.blocks.0.mlp.lin2.bias"]
    sd["image_encoder.blocks.2.attn.proj.weight"] = torch.zeros(24, 23)
    sd["image_encoder.extra_head.weight"] = torch.zeros(3, 3)
    sd["mask_decoder.output_hypernetworks_mlps.7.layers.0.weight"] = torch.zeros(32, 32)
  src = _tampered_pth(sources, tmp_path / "bad.pth", edit)
  dst = str(tmp_path / "out")
  with pytest.raises(CheckpointError) as err:
    convert_checkpoint(src, dst)
  problems = "\n".join(err.value.problems)
  assert len(err.value.problems) == 5, problems
  assert "missing tensor for mask_decoder.iou_token.embedding" in problems
  assert "missing tensor for image_encoder.blocks.0.mlp.lin2.bias" in problems
  assert "image_encoder.blocks.2.attn.proj.weight (24, 23)" in problems
  assert "image_encoder.extra_head.weight" in problems and "unexpected" in problems
  assert "output_hypernetworks_mlps.7" in problems
  _assert_nothing_written(dst)


def test_rejects_architecture_mismatch_in_config(sources, tmp_path):
  import shutil
  folder = tmp_path / "hf"
  shutil.copytree(sources["folder"], folder)
  cfg = json.loads((folder / "config.json").read_text())
  cfg["vision_config"]["num_hidden_layers"] = 4  # tensors have 3 blocks
  cfg["mask_decoder_config"]["iou_head_hidden_dim"] = 21
  (folder / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(CheckpointError) as err:
    convert_checkpoint(str(folder), str(tmp_path / "out"))
  problems = "\n".join(err.value.problems)
  assert "missing tensor for image_encoder.blocks.3" in problems
  assert "iou_prediction_head" in problems
  _assert_nothing_written(str(tmp_path / "out"))


@pytest.mark.parametrize("case", ["missing", "empty", "truncated_pth", "truncated_st",
                                  "unknown", "not_sam", "folder_without_config", "nan"])
def test_bad_sources(sources, tmp_path, case):
  path = tmp_path / "src.bin"
  if case == "missing":
    path = tmp_path / "nope.pth"
  elif case == "empty":
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
  elif case == "truncated_pth":
    path = tmp_path / "cut.pth"
    path.write_bytes(open(sources["pth"], "rb").read()[:5000])
  elif case == "truncated_st":
    path = tmp_path / "cut.safetensors"
    path.write_bytes(open(sources["safetensors"], "rb").read()[:5000])
  elif case == "unknown":
    path = tmp_path / "weights.npz"
    np.savez(path, a=np.zeros(3))
  elif case == "not_sam":
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(3, 3)}, path)
  elif case == "folder_without_config":
    path = tmp_path / "hf"
    path.mkdir()
    (path / "model.safetensors").write_bytes(open(sources["safetensors"], "rb").read())
  elif case == "nan":
    def edit(sd):
      sd["image_encoder.pos_embed"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.pth"
    _tampered_pth(sources, path, edit)
  dst = str(tmp_path / "out")
  with pytest.raises(CheckpointError) as err:
    convert_checkpoint(str(path), dst)
  assert str(path) in str(err.value)
  _assert_nothing_written(dst)


def test_existing_destination_is_refused(sources, tmp_path):
  dst = tmp_path / "out"
  dst.mkdir()
  (dst / "keep.txt").write_text("x")
  with pytest.raises(FileExistsError):
    convert_checkpoint(sources["pth"], str(dst))
  assert os.listdir(dst) == ["keep.txt"]


def test_cli_converts_and_restores_without_torch(sources, tmp_path):
  dst = str(tmp_path / "ckpt")
  run = subprocess.run([sys.executable, "-m", "simsam_jax.convert",
                        f"--src={sources['folder']}", f"--dst={dst}"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr
  assert "hf_folder" in run.stdout
  # Restoring must work with torch unavailable.
  code = ("import sys; sys.modules['torch'] = None\n"
          "from simsam_jax.checkpoint import load_model\n"
          f"m = load_model({dst!r}); print(m.config.encoder.depth)")
  run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
  assert run.returncode == 0, run.stderr
  assert run.stdout.strip() == "3"


def test_cli_error_exit(sources, tmp_path):
  def edit(sd):
    del sd["mask_decoder.mask_tokens.weight"]
  src = _tampered_pth(sources, tmp_path / "bad.pth", edit)
  dst = str(tmp_path / "ckpt")
  run = subprocess.run([sys.executable, "-m", "simsam_jax.convert", f"--src={src}",
                        f"--dst={dst}"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert run.returncode != 0
  assert "mask_decoder.mask_tokens" in run.stderr and "bad.pth" in run.stderr
  _assert_nothing_written(dst)
