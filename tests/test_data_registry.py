"""The dataset registry: one list of names and aliases that every reader uses,
one message for an unknown name, and a new dataset added by one register call."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from simsam_jax import synthetic
from simsam_jax import evaluate as ev
from simsam_jax.data import loading, protocols, registry
from simsam_jax.data.builder import LocalBuilder, common_features
from simsam_jax.evaluation import plugins
from simsam_jax.evaluation.config import get_eval_config
from simsam_jax.training import trainer

ALIASES = {"busi": "busi", "BUSI": "busi", "cvc": "cvc_clinicdb", "cvc612": "cvc_clinicdb",
           "cvc_clinic_db": "cvc_clinicdb", "isic": "isic2016", "isic_2016": "isic2016",
           "phantom": "phantom", "nifti_folder": "nifti_folder"}
EXAMPLE = {"image": np.zeros((4, 4, 3), np.uint8), "mask": np.full((4, 4), 200, np.uint8)}


@pytest.mark.parametrize("alias,name", sorted(ALIASES.items()))
def test_every_reader_accepts_every_registered_alias(alias, name, tmp_path):
  assert registry.canonical(alias) == name
  assert isinstance(loading.get_builder(alias, tmp_path), registry.get(name).builder)
  assert get_eval_config(alias).dataset == name
  assert get_eval_config(alias).builder_config == registry.get(name).default_config
  assert protocols.prepare(EXAMPLE, "paper", alias).mask.all()


def test_protocol_hook_gives_cvc_its_rules():
  assert protocols.rules(protocols.NATIVE, "cvc612") == ("cv2_bilinear", 127)
  assert protocols.rules(protocols.NATIVE, "isic") == ("pil_default", 0)
  # CVC's grey noise (value 100) is foreground in `paper`, not in `native`.
  grey = dict(EXAMPLE, mask=np.full((4, 4), 100, np.uint8))
  assert protocols.prepare(grey, "native", "cvc612").mask.sum() == 0
  assert protocols.prepare(grey, "native", "isic").mask.all()


def test_unknown_alias_gives_one_message_listing_the_registered_names(tmp_path):
  messages = []
  for call in (lambda: registry.get("kvasir"),
               lambda: loading.get_builder("kvasir", tmp_path),
               lambda: loading.prepare_builder("kvasir", tmp_path / "tfds"),
               lambda: get_eval_config("kvasir"),
               lambda: protocols.prepare(EXAMPLE, "paper", "kvasir")):
    with pytest.raises(ValueError) as info:
      call()
    messages.append(str(info.value))
  assert len(set(messages)) == 1, messages
  for name in ("busi", "cvc_clinicdb", "cvc612", "isic2016", "phantom", "nifti_folder"):
    assert name in messages[0]
  assert messages[0].startswith("unknown dataset 'kvasir'; registered datasets: ")
  config = get_eval_config("busi")
  config.dataset = "kvasir"
  with pytest.raises(trainer.TrainingError, match="registered datasets: busi"):
    trainer.validate_config(config)
  with pytest.raises(ValueError, match="already registered"):
    registry.register(registry.DatasetSpec("cvc", LocalBuilder))


class Toy(LocalBuilder, skip_registration=True):
  """Three generated lesions in one test split (the dataset a user adds)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def __init__(self, *, on_bad_example: str = "raise", **kwargs):
    del on_bad_example
    super().__init__(**kwargs)

  def _info(self):
    return self.dataset_info_from_configs(features=common_features(),
                                          disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"test": self._generate()}

  def _generate(self):
    for seed in range(3):
      image, mask, _ = synthetic.phantom(40 + 4 * seed, 36, seed=seed)
      name = f"toy:{seed}"
      yield f"toy_{seed}", {
          "id": f"toy_{seed}", "image": image, "mask": mask.astype(np.uint8) * 255,
          "mask_mode": "L", "height": image.shape[0], "width": image.shape[1],
          "image_file": name, "mask_files": np.asarray([name], dtype=object), "source_format": "synthetic"}


@pytest.fixture
def toy():
  spec = registry.register(registry.DatasetSpec(name="toy", builder=Toy, aliases=("toy_set",)))
  yield spec
  registry.unregister("toy")
  assert "toy" not in registry.names()


def test_a_registered_dataset_is_read_by_every_launcher(toy, tmp_path):
  assert "toy (aliases toy_set)" in registry.describe()
  examples = loading.load_split("toy_set", "test", tmp_path / "tfds")
  assert [e["id"] for e in examples] == ["toy_0", "toy_1", "toy_2"]
  config = get_eval_config("toy_set,runlocal")
  assert config.dataset == "toy"
  config.checkpoint, config.k, config.data_dir = "random:tiny", 2, str(tmp_path / "tfds")
  config.methods, config.num_figures = "sam,simsam", 0
  results = ev.evaluate(config, str(tmp_path / "run"), progress=False)
  assert results["num_images"] == 3 and results["dataset"] == "toy"
  with open(os.path.join(tmp_path, "run", "per_image.csv"), newline="") as f:
    rows = list(csv.DictReader(f))
  assert sorted((r["id"], r["method"]) for r in rows) == sorted(
      (f"toy_{i}", m) for i in range(3) for m in ("sam", "simsam"))


USER_DATASET_MODULE = '''
"""A user's dataset, registered at import (given to --config.import_modules)."""
from simsam_jax.data import registry
from test_data_registry import Toy

registry.register(registry.DatasetSpec(name="toy", builder=Toy, aliases=("toy_set",)))
'''


def test_a_dataset_registered_by_an_imported_module_is_selected_by_name(tmp_path):
  """`--config=configs/eval.py:ALIAS` names a dataset that the module of
  `--config.import_modules` registers: absl loads the config file while it
  parses `--config`, so the module is imported before."""
  (tmp_path / "user_toy_module.py").write_text(USER_DATASET_MODULE)
  repo = pathlib.Path(__file__).resolve().parents[1]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
      [str(repo), str(tmp_path), str(repo / "tests")]))

  def evaluate(dataset, workdir, *extra):
    return subprocess.run(
        [sys.executable, "-m", "simsam_jax.evaluate", f"--config=configs/eval.py:{dataset}",
         f"--workdir={workdir}", f"--config.data_dir={tmp_path / 'tfds'}",
         "--config.checkpoint=random:tiny", "--config.k=2", "--config.methods=sam",
         "--config.num_figures=0", "--config.reports=", *extra],
        cwd=repo, env=env, capture_output=True, text=True, timeout=600)

  done = evaluate("toy_set", tmp_path / "run", "--config.import_modules=user_toy_module")
  assert done.returncode == 0, done.stderr[-3000:]
  with open(tmp_path / "run" / "results.json") as f:
    results = json.load(f)
  assert (results["dataset"], results["num_images"]) == ("toy", 3)
  # An unknown name still gives the one message, which lists the user's
  # dataset too; a module that cannot be imported is named.
  sys.path.insert(0, str(tmp_path))
  try:
    assert plugins.import_modules_in_argv(
        ["evaluate", "--config=configs/eval.py:kvasir", "--config.import_modules",
         "user_toy_module"]) == ["user_toy_module"]
    with pytest.raises(ValueError, match="unknown dataset 'kvasir'; registered datasets: "
                       "busi.*toy \\(aliases toy_set\\)"):
      get_eval_config("kvasir")
    assert get_eval_config("toy_set,native").dataset == "toy"
  finally:
    sys.path.remove(str(tmp_path))
    registry.unregister("toy")
    sys.modules.pop("user_toy_module", None)
  with pytest.raises(ValueError, match="--config.import_modules: cannot import 'nope'"):
    plugins.import_modules_in_argv(["--config.import_modules=sam", "--config.import_modules=nope"])
