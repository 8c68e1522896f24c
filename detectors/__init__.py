"""Detectors: the Sigma runner, the learning-mode baseline and the ML anomaly detectors."""
