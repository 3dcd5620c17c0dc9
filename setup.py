"""simsam_jax: SimSAM (Towle, Chen, Zhou, ISBI 2024) in JAX/Flax NNX."""

import setuptools

INSTALL_REQUIRES = [
    "jax>=0.7",
    "flax>=0.12",
    "optax",
    "orbax-checkpoint",
    "numpy",
    "absl-py",
    "ml-collections",
    "Pillow",
    "tifffile",
    "scipy",
    "safetensors",
    "tqdm",
    # TensorBoard event files from simsam_jax.finetune, without TensorFlow.
    "tensorboardX",
    # Datasets (TFDS builders without TensorFlow: array_record files).
    "tensorflow-datasets",
    "array-record",
    # Prefetching loader of the evaluation (decoding and resizing overlap the device).
    "grain",
    # The paper's CVC-ClinicDB protocol resizes with OpenCV.
    "opencv-python-headless",
    # NSD exactly as DeepMind's reference implementation computes it.
    "surface-distance",
    # jax.export serialisation of compiled programs (simsam_jax.export).
    "flatbuffers",
]

# Reference implementations used only by the tests. torch is pinned to the
# CPU build available to this project; any looser spec resolves to a CUDA
# build of several GB.
TEST_REQUIRES = [
    "pytest",
    # Two workers (pytest.ini's addopts); the suite is compile- and
    # subprocess-bound.
    "pytest-xdist",
    "torch==2.13.0",
    "transformers",
    "segment-anything",
    # The published SAM-FT loss is MONAI's DiceLoss; tests/test_losses.py
    # compares against it.
    "monai",
    # The notebooks are executed top to bottom by the tests (papermill injects
    # their smoke parameters; ipykernel provides the "python3" kernel).
    "papermill",
    "ipykernel",
    # The MedSAM mirror test transcribes MedSAM_Inference.py, which resizes
    # with scikit-image; the medical-format tests build NIfTI/DICOM files.
    "scikit-image",
    "nibabel",
    "pydicom",
]

# NIfTI and DICOM images (simsam_jax.medical): read and written by their
# well-kept libraries, never parsed by hand.
MEDICAL_REQUIRES = [
    "nibabel",
    "pydicom>=3",
]

setuptools.setup(
    name="simsam_jax",
    version="0.1.0",
    description="SimSAM zero-shot medical image segmentation with SAM in JAX/Flax",
    packages=setuptools.find_packages(include=["simsam_jax", "simsam_jax.*"]),
    # The committed, deterministic dataset splits.
    package_data={"simsam_jax.data": ["splits/*.json"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # Reading official `.pth` checkpoints needs torch; nothing else does.
        "torch": ["torch==2.13.0"],
        "medical": MEDICAL_REQUIRES,
        "test": TEST_REQUIRES,
    },
)
