"""compsum_jax: comp-sum losses, their H-consistency theory and experiments in JAX.

Reference: Mao, Mohri & Zhong, "Cross-Entropy Loss Functions: Theoretical
Analysis and Applications", ICML 2023 (arXiv 2304.07288).
"""

__version__ = "0.1.0"
