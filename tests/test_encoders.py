"""Image encoders as a registry behind `Sam` (`simsam_jax.modeling.encoders`).

A toy second family, registered here (two strided convolutions and a
LayerNorm giving the (64, 64, C) embedding of a 1024 input), builds a `Sam`
that runs SimSAM end to end, and converts from an official-named checkpoint
through the registry (format detection, key table, config inference,
nested sidecar). Checkpoints written before encoders were nested (flat ViT
fields in the sidecar) still load.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from simsam_jax import processing, synthetic
from simsam_jax.checkpoint import convert_checkpoint, load_model, read_sidecar
from simsam_jax.checkpoint.key_tables import dense_rules, ln_rules
from simsam_jax.checkpoint.store import save_checkpoint
from simsam_jax.modeling import SamConfig, build_sam, encoders, get_preset
from simsam_jax.modeling.encoders import EncoderConfig, EncoderFamily
from simsam_jax.modeling.encoders.vit import ViTConfig
from simsam_jax.modeling.layers import gelu, layer_norm
from simsam_jax.simsam import SimSam, SimSamConfig

import decisive
import torch_reference as tr


@dataclasses.dataclass(frozen=True)
class ToyConvConfig(EncoderConfig):
  family = "toy_conv"
  hidden: int = 8

  @property
  def stride(self) -> int:
    return 16

  def problems(self, image_size: int) -> list[str]:
    return [] if image_size % 16 == 0 else [f"image_size={image_size} % 16 != 0"]


class ToyConvEncoder(nnx.Module):
  """(B, S, S, 3) -> (B, S/16, S/16, prompt_embed_dim) float32."""

  def __init__(self, config: SamConfig, *, rngs, policy):
    hidden, out = config.encoder.hidden, config.prompt_embed_dim
    self.stem = nnx.Conv(3, hidden, (4, 4), strides=(4, 4), padding="VALID", rngs=rngs)
    self.proj = nnx.Conv(hidden, out, (4, 4), strides=(4, 4), padding="VALID", rngs=rngs)
    self.norm = layer_norm(out, 1e-6, rngs)

  def __call__(self, pixels):
    return self.norm(self.proj(gelu(self.stem(pixels))))


def _detect(keys):
  return "official" if "image_encoder.stem.weight" in keys else None


def _infer(tensors, naming):
  return ToyConvConfig(hidden=tensors["image_encoder.stem.weight"].shape[0]), None


TOY = EncoderFamily(
    name="toy_conv", module=ToyConvEncoder, config=ToyConvConfig,
    key_rules={"official": tuple(
        dense_rules(r"image_encoder\.stem", "image_encoder.stem", "conv")
        + dense_rules(r"image_encoder\.proj", "image_encoder.proj", "conv")
        + ln_rules(r"image_encoder\.norm", "image_encoder.norm"))},
    detect=_detect, infer=_infer)



def toy_sam() -> SamConfig:
  """SAM's geometry (1024 input, 64 x 64 x 256 embedding) on the toy encoder."""
  return SamConfig(image_size=1024, encoder=ToyConvConfig(), prompt_embed_dim=256,
                   decoder_mlp_dim=128, iou_head_hidden_dim=64)


@pytest.fixture
def toy_family():
  encoders.register_encoder(TOY)
  yield TOY
  encoders.unregister_encoder(TOY.name)


def test_vit_is_registered_and_nested_in_the_config():
  config = get_preset("tiny")
  assert isinstance(config.encoder, ViTConfig)
  assert encoders.family_of(config.encoder).name == "vit"
  d = config.to_dict()
  assert d["encoder"]["family"] == "vit" and d["encoder"]["global_attn_indexes"] == [1]
  assert "encoder_dim" not in d and "patch_size" not in d
  assert SamConfig.from_dict(json.loads(json.dumps(d))) == config


def test_unknown_family_is_refused_with_the_registered_names():
  d = get_preset("tiny").to_dict()
  d["encoder"]["family"] = "hiera"
  with pytest.raises(ValueError, match=r"'hiera'.*registered: \['vit'\]"):
    SamConfig.from_dict(d)
  with pytest.raises(ValueError, match="both a nested encoder and flat ViT"):
    SamConfig.from_dict({**get_preset("tiny").to_dict(), "encoder_dim": 24})


# `SamConfig.to_dict()` of the tiny preset as written before encoders were nested.
FLAT_TINY = {
    "image_size": 160, "patch_size": 16, "encoder_dim": 24, "encoder_depth": 3,
    "encoder_num_heads": 3, "encoder_mlp_dim": 40, "encoder_window_size": 3,
    "encoder_global_attn_indexes": [1], "encoder_layer_norm_eps": 1e-6,
    "prompt_embed_dim": 32, "mask_in_chans": 16, "decoder_depth": 2,
    "decoder_num_heads": 8, "decoder_mlp_dim": 24, "attention_downsample_rate": 2,
    "num_multimask_outputs": 3, "iou_head_depth": 3, "iou_head_hidden_dim": 20,
    "transformer_layer_norm_eps": 1e-5, "final_layer_norm_eps": 1e-5}


def test_flat_sidecar_of_older_checkpoints_still_loads(tmp_path):
  config = get_preset("tiny")
  assert SamConfig.from_dict(FLAT_TINY) == config
  model = build_sam(config, 4)
  dst = tmp_path / "ckpt"
  save_checkpoint(str(dst), nnx.state(model), config, {"format": "random"})
  sidecar = json.loads((dst / "simsam_jax.json").read_text())
  assert sidecar["architecture"]["encoder"]["family"] == "vit"  # written nested
  sidecar["architecture"] = FLAT_TINY  # as an older version wrote it
  (dst / "simsam_jax.json").write_text(json.dumps(sidecar))
  assert read_sidecar(str(dst))["config"] == config
  restored = load_model(str(dst))
  pixels = jax.random.normal(jax.random.key(0), (1, 160, 160, 3))
  np.testing.assert_array_equal(np.asarray(restored.encode_image(pixels)),
                                np.asarray(model.encode_image(pixels)))


def test_toy_family_runs_simsam_end_to_end(toy_family):
  config = toy_sam()
  model = build_sam(config, 7)
  assert isinstance(model.image_encoder, ToyConvEncoder)
  image, truth, box = synthetic.phantom(96, 128, seed=2)
  pixels, info = processing.preprocess(image, config.image_size)
  embedding = model.encode_image(jnp.asarray(pixels)[None])
  assert embedding.shape == (1, 64, 64, 256) and embedding.dtype == jnp.float32
  box_model = processing.apply_boxes(np.asarray(box, np.float32)[None], info.original_size,
                                     info.resized_size)[0]
  decisive.decisive_(model, pixels, box_model)
  k = 6
  engine = SimSam(model, SimSamConfig(k=k))
  out = jax.device_get(engine.run(pixels, box, info))
  assert out.mask.shape == truth.shape
  for mask in (out.mask, out.sam_mask):
    assert 0.05 < mask.mean() < 0.95, mask.mean()
  assert out.clicks.shape == (k, 2) and out.candidate_logits.shape == (k, 256, 256)
  assert -1 <= int(out.chosen) < k
  # The returned logits are those of the chosen candidate (iou_medoid picks one).
  assert int(out.chosen) >= 0
  np.testing.assert_array_equal(out.low_res_logits, out.candidate_logits[int(out.chosen)])
  assert not np.array_equal(out.clicks[0], out.clicks[1])


def test_toy_family_converts_through_the_registry(toy_family, tmp_path):
  # Official prompt encoder and decoder tensors of the tiny preset, with the
  # toy encoder's tensors (PyTorch layouts) in place of the ViT's.
  official = tr.randomize_(tr.official_sam(get_preset("tiny")), seed=5)
  sd = {k: v for k, v in official.state_dict().items() if not k.startswith("image_encoder.")}
  g = torch.Generator().manual_seed(0)
  sd["image_encoder.stem.weight"] = torch.randn(5, 3, 4, 4, generator=g)
  sd["image_encoder.stem.bias"] = torch.randn(5, generator=g)
  sd["image_encoder.proj.weight"] = torch.randn(32, 5, 4, 4, generator=g)
  sd["image_encoder.proj.bias"] = torch.randn(32, generator=g)
  sd["image_encoder.norm.weight"] = torch.randn(32, generator=g)
  sd["image_encoder.norm.bias"] = torch.randn(32, generator=g)
  src = tmp_path / "toy.pth"
  torch.save(sd, src)
  meta = convert_checkpoint(str(src), str(tmp_path / "ckpt"))
  arch = meta["architecture"]
  assert arch["encoder"] == {"family": "toy_conv", "hidden": 5}
  assert arch["image_size"] == 1024 and arch["prompt_embed_dim"] == 32
  assert meta["preset"] is None
  model = load_model(str(tmp_path / "ckpt"))
  assert isinstance(model.image_encoder, ToyConvEncoder)
  np.testing.assert_array_equal(
      np.asarray(model.image_encoder.stem.kernel[...]),
      sd["image_encoder.stem.weight"].numpy().transpose(2, 3, 1, 0))
  # The encoder against a PyTorch transcription of the toy module.
  x = torch.randn(1, 3, 1024, 1024, generator=g)
  with torch.no_grad():
    h = torch.nn.functional.gelu(torch.nn.functional.conv2d(
        x, sd["image_encoder.stem.weight"], sd["image_encoder.stem.bias"], stride=4))
    y = torch.nn.functional.conv2d(h, sd["image_encoder.proj.weight"],
                                   sd["image_encoder.proj.bias"], stride=4)
    ref = torch.nn.functional.layer_norm(y.permute(0, 2, 3, 1), (32,),
                                         sd["image_encoder.norm.weight"],
                                         sd["image_encoder.norm.bias"], eps=1e-6)
  got = np.asarray(model.encode_image(jnp.asarray(x.permute(0, 2, 3, 1).numpy())))
  assert got.shape == (1, 64, 64, 32)
  np.testing.assert_allclose(got, ref.numpy(), atol=2e-4)


def test_unrecognised_encoder_names_the_registered_families(tmp_path):
  official = tr.randomize_(tr.official_sam(get_preset("tiny")), seed=5)
  sd = {k: v for k, v in official.state_dict().items() if not k.startswith("image_encoder.")}
  sd["image_encoder.stem.weight"] = torch.zeros(5, 3, 4, 4)  # toy_conv is not registered
  torch.save(sd, tmp_path / "toy.pth")
  with pytest.raises(ValueError, match=r"no registered image encoder family.*vit"):
    convert_checkpoint(str(tmp_path / "toy.pth"), str(tmp_path / "ckpt"))
