"""The paper's datasets as distributed, as TFDS builders readable without TF.

* `registry`: every dataset's name, aliases, builder, default config and
  protocol hook; a new dataset is one module and one `registry.register`.
* `builder`: the builder base classes (`ManualBuilder`, `LocalBuilder`).
* `busi.Busi`, `cvc_clinicdb.CvcClinicdb`, `isic2016.Isic2016`,
  `nifti_folder.NiftiFolder`: TFDS `GeneratorBasedBuilder`s (registered as
  "busi", "cvc_clinicdb", "isic2016", "nifti_folder") that read a
  `manual_dir` and write ArrayRecord files; `phantom.Phantom` ("phantom")
  generates ultrasound-like lesions instead.
* `splitting` and `make_splits`: the committed, deterministic splits
  (`splits/*.json`).
* `protocols`: the `paper` and `native` evaluation protocols (`prepare`).
* `loading.load_split`: build if needed, return a split as numpy dicts.

Importing this package imports `tensorflow_datasets` (not TensorFlow).
"""

from simsam_jax.data.common import DatasetError
from simsam_jax.data.busi import Busi, BusiConfig, select_paper437
from simsam_jax.data.cvc_clinicdb import CvcClinicdb
from simsam_jax.data.isic2016 import Isic2016
from simsam_jax.data.nifti_folder import NiftiFolder
from simsam_jax.data.phantom import Phantom
from simsam_jax.data.loading import (build_metadata, get_builder, iter_split,
                                     load_split, prepare_builder,
                                     skipped_examples)
from simsam_jax.data.protocols import (NATIVE, PAPER, PROTOCOLS,
                                       PreparedExample, Protocol, box_from_mask,
                                       prepare)

__all__ = [
    "Busi", "BusiConfig", "CvcClinicdb", "DatasetError", "Isic2016", "NATIVE", "NiftiFolder",
    "PAPER", "PROTOCOLS", "Phantom", "PreparedExample", "Protocol", "box_from_mask",
    "build_metadata", "get_builder", "iter_split", "load_split", "prepare",
    "prepare_builder", "select_paper437", "skipped_examples",
]
