r"""Pre-training a small SAM from scratch on generated phantoms (the demo's model).

  python -m simsam_jax.finetune --config=configs/pretrain_phantom.py --workdir=runs/phantom_tiny

A ~2 M-parameter SAM (128 x 128 input, 8 x 8 embedding grid, 32 x 32 low-res
logits; the `phantom_tiny` architecture below, sized so that 2 CPU cores
train it in about 10 minutes: 10 min 20 s measured on an idle 2-core machine,
bit-identical to the committed checkpoint) trained in `full` mode from
random weights on an endless, deterministic stream of phantoms
(`simsam_jax.synthetic.phantom`, sides 160-320 px like the `phantom` test
split, seeds from 10,000,000 on, so disjoint from every built split) with
`interactive` prompts: a jittered box, then `num_rounds` clicks from the error
region with the previous prediction as mask prompt. Flips, small rotations
and scales and intensity jitter augment the stream.

The model knows phantoms only. `arg`: "" (the real run) or "runlocal" (a few
steps, for tests).
"""

from ml_collections import ConfigDict

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "_finetune_config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "finetune.py"))
_finetune = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_finetune)

ARCHITECTURE = dict(
    image_size=128, patch_size=16, encoder_dim=128, encoder_depth=4, encoder_num_heads=4,
    encoder_mlp_dim=512, encoder_window_size=4, encoder_global_attn_indexes=(1, 3),
    prompt_embed_dim=128, mask_in_chans=16, decoder_depth=2, decoder_num_heads=8,
    decoder_mlp_dim=512, num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=128)


def get_config(arg: str = ""):
  c = _finetune.get_config("phantom")
  c.dataset = "phantom_stream"
  c.builder_config = ""
  c.checkpoint = ""
  c.architecture = ConfigDict(ARCHITECTURE)
  c.init_seed = 0
  c.mode = "full"
  c.remat = False  # a 2 M model needs no rematerialisation
  c.prompt = "interactive"
  c.num_rounds = 2
  c.augment = dict(hflip=True, vflip=True, rotate_degrees=10.0, scale=0.1, intensity=0.1)
  c.loss = "dice_per_image"
  c.iou_target_threshold = 0.0
  c.batch_size = 8
  c.steps = 2000
  c.warmup_steps = 100
  c.learning_rate = 1e-3
  c.weight_decay = 0.01
  c.max_grad_norm = 1.0
  c.seed = 0
  c.checkpoint_every_steps = 200
  c.min_side = 160
  c.max_side = 320
  if "runlocal" in (arg or ""):
    c.steps = 3
    c.batch_size = 2
    c.warmup_steps = 0
    c.checkpoint_every_steps = 2
  return c
