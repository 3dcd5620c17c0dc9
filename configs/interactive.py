r"""Interactive evaluation (click protocol): SAM's box vs SimSAM vs clicks only.

  python -m simsam_jax.interactive --config=configs/interactive.py:busi \
      --workdir=runs/busi_clicks --config.manual_dir=~/data/busi \
      --config.checkpoint=checkpoints/sam_vit_b

`arg` is `DATASET[,native][,runlocal]` as in configs/eval.py (DATASET in busi,
cvc_clinicdb, isic2016, phantom); `runlocal` is a seconds-long smoke run
(random `tiny_1024` weights, K = 4, 5 rounds, 1 figure). Every field can be
overridden with `--config.FIELD=value`. The dataset, protocol, checkpoint,
seed, K and shard fields are those of the evaluation (configs/eval.py,
`python -m simsam_jax.evaluate`); the click protocol adds:

* `num_rounds`: N clicks per image and start (RITM / SAM: 20).
* `starts`: comma-separated, of `box` (SAM's box-only mask is round 0),
  `simsam` (SimSAM's mask with K = `k` clicks is round 0), `clicks_only`.
* `mask_prompt`: `logits` (the previous round's low-res logits, SAM's
  convention), `binary` or `none`.
* `keep_box`: box starts keep the box prompt in every round.
* `batch_size`: images of one size decoded together (vmapped, sharded over
  the local devices).

Expected result with the official ViT-B weights: not measured yet (no real
checkpoint was available while writing this); see README "Interactive
evaluation and uncertainty" for how to produce it.
"""

from simsam_jax.evaluation.config import get_eval_config


def get_config(arg: str = "busi"):
  c = get_eval_config(arg)
  for unused in ("methods", "save_masks", "nsd_tolerance", "empty_mask_policy",
                 "review_workdir", "review_keep", "metrics", "columns", "reports",
                 "figures", "import_modules"):
    del c[unused]
  c.num_rounds = 20
  c.starts = "box,simsam,clicks_only"
  c.mask_prompt = "logits"
  c.keep_box = True
  c.batch_size = 8
  if "runlocal" in (arg or ""):
    c.num_rounds = 5
    c.num_figures = 1
  return c
