r"""Converts a SAM checkpoint into a simsam_jax (Flax NNX + Orbax) checkpoint.

  python -m simsam_jax.convert --src=sam_vit_b_01ec64.pth --dst=checkpoints/sam_vit_b
  python -m simsam_jax.convert --src=path/to/facebook-sam-vit-base --dst=checkpoints/hf_vit_b
  python -m simsam_jax.convert --src=medsam_vit_b.pth --dst=checkpoints/medsam_vit_b --profile=medsam

`--src` may be an official SAM `.pth`, a Hugging Face `model.safetensors`, or
a Hugging Face model folder (`config.json` + safetensors). The format and the
architecture are detected; every missing, unexpected or mis-shaped tensor is
reported at once, the exit status is non-zero and nothing is left at `--dst`.
`--profile` (default `sam`) names the preprocessing the weights were trained
with (`simsam_jax.profiles`: `medsam` for MedSAM); it is recorded in the
checkpoint's sidecar and every tool applies it. Reading `.pth` needs torch;
restoring the result (`simsam_jax.checkpoint.
load_model`) does not.
"""

from __future__ import annotations

import sys
import time

from absl import app, flags

from simsam_jax.checkpoint import CheckpointError, convert_checkpoint

_SRC = flags.DEFINE_string("src", None, "Official .pth, HF model.safetensors or HF model folder.")
_PROFILE = flags.DEFINE_string(
    "profile", "sam", "Preprocessing profile the weights were trained with "
    "(simsam_jax.profiles: sam, medsam, or a registered one).")
_DST = flags.DEFINE_string("dst", None, "Output folder (must not exist), e.g. checkpoints/sam_vit_b.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not _SRC.value or not _DST.value:
    raise app.UsageError("--src and --dst are required")
  start = time.perf_counter()
  try:
    meta = convert_checkpoint(_SRC.value, _DST.value, _PROFILE.value)
  except (CheckpointError, FileExistsError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  arch = meta["preset"] or "custom architecture"
  print(f"Converted {meta['source']['format']} checkpoint {_SRC.value} ({arch}, "
        f"{meta['num_parameters']:,} parameters, profile {meta['profile']}) to {_DST.value} in "
        f"{time.perf_counter() - start:.1f} s")
  return 0


if __name__ == "__main__":
  flags.mark_flags_as_required(["src", "dst"])
  app.run(lambda argv: sys.exit(main(argv)))
