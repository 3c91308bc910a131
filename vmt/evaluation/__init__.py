"""Evaluation: sample and density metrics, feature-space scores, the scores of the
supervised tasks and their baselines, ArviZ export and plots (NumPy, SciPy,
scikit-learn and matplotlib; no torch, no JAX)."""
