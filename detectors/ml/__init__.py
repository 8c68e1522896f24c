"""Machine-learning detectors: unsupervised models of a site's normal communication.

- :mod:`detectors.ml.features`: per-window, per-pair features of the request events;
- :mod:`detectors.ml.communication`: a nearest-neighbour novelty model over them (scikit-learn),
  its thresholds, explanations and alert documents, and its evaluation on a labelled capture;
- :mod:`detectors.ml.model_io`: saving and loading a trained model (skops and JSON, no pickle).
"""
