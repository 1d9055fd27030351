"""Datasets as host NumPy arrays, deterministic batching, on-device augmentation.

``load_dataset(name, ...)`` covers the offline ``digits`` and ``synthetic``
(Gaussian mixture with exact posterior) datasets and the tfds image datasets
read with ``tfds.data_source`` (no TensorFlow at run time).
"""

from compsum_jax.data.batching import (
    augment_images,
    eval_batches,
    num_eval_batches,
    num_train_batches,
    to_float_images,
    train_batches,
    train_permutation,
)
from compsum_jax.data.noise import apply_label_noise, flip_labels, num_flipped
from compsum_jax.data.offline import (
    GaussianMixture,
    load_digits_splits,
    load_synthetic_splits,
    make_gaussian_mixture,
)
from compsum_jax.data.registry import (
    DATASET_NAMES,
    channel_stats,
    load_dataset,
    split_validation,
)
from compsum_jax.data.tfds_source import (
    TFDS_DATASETS,
    default_data_dir,
    find_prepared_version,
    load_tfds_splits,
    open_tfds_split,
)
from compsum_jax.data.types import ArraySplit, Dataset, LabelNoise

__all__ = [
    "DATASET_NAMES",
    "TFDS_DATASETS",
    "ArraySplit",
    "Dataset",
    "GaussianMixture",
    "LabelNoise",
    "apply_label_noise",
    "augment_images",
    "channel_stats",
    "default_data_dir",
    "eval_batches",
    "find_prepared_version",
    "flip_labels",
    "load_dataset",
    "load_digits_splits",
    "load_synthetic_splits",
    "load_tfds_splits",
    "make_gaussian_mixture",
    "num_eval_batches",
    "num_flipped",
    "num_train_batches",
    "open_tfds_split",
    "split_validation",
    "to_float_images",
    "train_batches",
    "train_permutation",
]
