"""Evaluation: test metrics beside baselines, significance tests, plots."""
