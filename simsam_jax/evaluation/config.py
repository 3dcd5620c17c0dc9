"""The evaluation config shared by the files in `configs/` (see configs/eval.py)."""

from ml_collections import ConfigDict

from simsam_jax.data import registry


def get_eval_config(arg: str = "busi") -> ConfigDict:
  """`arg` = DATASET[,native][,runlocal]; see configs/eval.py.

  DATASET: a name or alias of `simsam_jax.data.registry` (its registered
  `default_config` becomes `builder_config`).
  """
  parts = [p.strip() for p in (arg or "busi").split(",") if p.strip()]
  spec = registry.get(parts[0])
  unknown = set(parts[1:]) - {"native", "runlocal"}
  if unknown:
    raise ValueError(f"unknown config options {sorted(unknown)}; use native, runlocal")
  c = ConfigDict()
  c.dataset = spec.name
  # BUSI: "paper437" (the published selection) or "full" (all 647 benign +
  # malignant, multi-masks merged), "full_with_normal"; nifti_folder:
  # "labelled" or "largest" (see each builder).
  c.builder_config = spec.default_config
  c.data_dir = "~/tensorflow_datasets"  # where the TFDS dataset is built
  c.manual_dir = ""  # the dataset as distributed (needed for the first build)
  c.checkpoint = "checkpoints/sam_vit_b"  # converted folder or random:PRESET[:SEED]
  c.protocol = "native" if "native" in parts else "paper"
  # Registered names (simsam_jax.evaluation.methods), or in a config file a
  # dict of SimSamConfig overrides, e.g. {"sam": {}, "k8": {"k": 8}}.
  c.methods = "sam,simsam,random,pixel_mean,k1"
  # Plug-ins (simsam_jax.evaluation.plugins): summarised per-image metrics
  # (CSV, results.json, table.md), further CSV columns, report sections and
  # figures; modules imported first, which may register their own.
  c.metrics = "dsc,iou,nsd"
  c.columns = "confidence,chosen,foreground,iou_prediction,chosen_score"
  c.reports = "uncertainty"
  c.figures = "panels"
  c.import_modules = ""  # comma-separated module names on sys.path
  c.k = 50
  c.seed = 0
  c.split = "test"  # train, validation, test or all
  c.nsd_tolerance = 2.0  # pixels (spacing 1, 1)
  # Datasets with a physical spacing (nifti_folder): NSD tolerance in mm;
  # when set (> 0) it replaces nsd_tolerance and spacing is in mm.
  c.nsd_tolerance_mm = 0.0
  # "" = the checkpoint's preprocessing profile (simsam_jax.profiles); a
  # name overrides it (logged as a warning).
  c.profile = ""
  c.empty_mask_policy = "nan"  # both masks empty: metric NaN (excluded from means)
  c.save_masks = False
  c.num_figures = 8
  c.on_bad_example = "raise"  # or "skip": skipped files are listed in results.json
  # review.csv: a finished evaluation of the validation split (same dataset,
  # checkpoint, protocol, K) whose SimSAM confidences choose the threshold
  # that keeps `review_keep` of its images; "" ranks without a threshold.
  c.review_workdir = ""
  c.review_keep = 0.9
  # Several processes (hosts, or jobs of a cluster array) sharing one workdir
  # evaluate disjoint image shards: image i goes to shard i % num_shards.
  # num_shards = 0: one shard per JAX process (jax.process_count(), index
  # jax.process_index()). The last shard to finish writes the report.
  c.num_shards = 1
  c.shard_index = 0
  # "" (one process), "auto" (jax.distributed.initialize() detects Cloud TPU
  # pods, SLURM, Open MPI, Kubernetes) or "HOST:PORT,NUM_PROCESSES,PROCESS_ID".
  c.distributed = ""
  # Run options of the model (simsam_jax.modeling.policy), not architecture:
  # "float32" or "bfloat16" (matmuls and convolutions in bfloat16, float32
  # weights; softmax, LayerNorms, logits and SimSAM in float32), and the
  # attention kernel, "xla" or "cudnn" (CUDA GPU with bfloat16 only).
  c.precision = "float32"
  c.attention_impl = "xla"
  # Images per compiled step, sharded over the local devices (a multiple of
  # their number); 0: automatic (8 per device on GPU/TPU, 1 per device on
  # CPU). With one image per device, rows equal a batch-1 run's; see
  # simsam_jax.evaluation.runner for more per device.
  c.batch_size = 0
  if "runlocal" in parts:
    c.checkpoint = "random:tiny_1024"
    c.k = 4
    c.num_figures = 2
  return c
