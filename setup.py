"""Setup for compsum_jax: comp-sum losses, H-consistency theory and experiments."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.10",
    "jaxlib>=0.10",
    "flax>=0.12",
    "optax>=0.2.8",
    "chex>=0.1.92",
    "orbax-checkpoint>=0.12",
    "tensorflow-datasets>=4.9.10",
    "ml-collections>=1.1",
    "absl-py>=2.5",
    "numpy>=1.26",
    "scikit-learn>=1.5",
    "matplotlib>=3.8",
    "tqdm>=4.66",
    "tensorboardX>=2.6",
    # tfds needs these at run time but does not declare them.
    "pillow>=10",
    "importlib_resources>=6",
]

EXTRAS_REQUIRE = {
    "test": [
        "pytest>=8",
        "pytest-xdist>=3.5",
        "hypothesis>=6.100",
        # jax's persistent compilation cache with a size bound (the tests set
        # one) needs it; without it the cache is silently off.
        "filelock>=3.12",
        "scipy>=1.12",
        "ruff>=0.6",
        # The notebooks' tests execute them.
        "nbclient>=0.10",
        "nbformat>=5.10",
        "ipykernel>=6.29",
    ],
    # Only to prepare tfds datasets on a machine with network access.
    "prepare": ["tensorflow-cpu>=2.16"],
}

setup(
    name="compsum_jax",
    version="0.1.0",
    description=("Comp-sum losses (cross-entropy, sum-exponential, GCE, MAE), "
                 "their H-consistency bounds and experiments, in JAX."),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["compsum_jax", "compsum_jax.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
