"""Saving and loading a trained :class:`~detectors.ml.communication.CommunicationModel`.

A model is two files side by side:

- ``<name>.skops``: the scikit-learn objects (one nearest-neighbour index per protocol), written
  with ``skops.io.dump``. skops stores objects as a schema of known types, not as a pickle, and
  :func:`load` reads it with an explicit allowlist: the file's types outside skops' default
  trusted set must all be in :data:`TRUSTED_TYPES` (empty: a NearestNeighbors index needs
  nothing more), otherwise loading is refused before anything is built. Never ``trusted=True``,
  never pickle.
- ``<name>.json``: the metadata, readable and reviewable: :data:`SCHEMA`, the feature names, the
  window length, the thresholds, the training period, the creation time, and the per-protocol
  scaling statistics.

:func:`load` checks the schema version and the feature names against the running code's
(:data:`detectors.ml.features.FEATURES`) and refuses a model made for other features with a
ValueError naming what differs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import skops.io as sio  # type: ignore[import-untyped]
from sklearn.neighbors import NearestNeighbors  # type: ignore[import-untyped]

from detectors.ml.communication import CommunicationModel
from detectors.ml.features import FEATURES

SCHEMA = 1
#: types a model file may hold beyond skops' default trusted ones (scikit-learn estimators,
#: numpy arrays and builtins)
TRUSTED_TYPES: tuple[str, ...] = ()


def paths(path: Path) -> tuple[Path, Path]:
    """The model file and its metadata file for ``path`` (with or without a suffix)."""
    base = path.with_suffix("") if path.suffix in (".skops", ".json") else path
    return base.with_name(base.name + ".skops"), base.with_name(base.name + ".json")


def save(model: CommunicationModel, path: Path) -> tuple[Path, Path]:
    """Write ``model`` (``<path>.skops`` and ``<path>.json``); returns both paths."""
    if not model.index:
        raise ValueError("the model is not trained")
    model_path, meta_path = paths(path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    sio.dump(dict(sorted(model.index.items())), model_path)
    meta = {"schema": SCHEMA, **model.metadata()}
    meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return model_path, meta_path


def load(path: Path) -> CommunicationModel:
    """Read a model written by :func:`save`; ValueError naming what does not fit (schema,
    feature names, untrusted types, contents)."""
    model_path, meta_path = paths(path)
    try:
        meta: Any = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{meta_path.name}: not JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path.name}: not a metadata object")
    if meta.get("schema") != SCHEMA:
        raise ValueError(f"{meta_path.name}: schema: expected {SCHEMA}, got {meta.get('schema')!r}")
    features = meta.get("features")
    if features != list(FEATURES):
        theirs = features if isinstance(features, list) else []
        missing = [f for f in FEATURES if f not in theirs]
        extra = [f for f in theirs if f not in FEATURES]
        detail = f"missing {missing}, unknown {extra}" if missing or extra else "other order"
        raise ValueError(f"{meta_path.name}: features differ from this version's ({detail})")
    untrusted = sio.get_untrusted_types(file=model_path)
    refused = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if refused:
        raise ValueError(f"{model_path.name}: untrusted types {refused}")
    index = sio.load(model_path, trusted=list(TRUSTED_TYPES))
    if not isinstance(index, dict) or not all(
        isinstance(k, str) and isinstance(v, NearestNeighbors) for k, v in index.items()
    ):
        raise ValueError(f"{model_path.name}: not a map of protocol to NearestNeighbors")
    try:
        return CommunicationModel.from_metadata(meta, index)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{meta_path.name}: {type(exc).__name__}: {exc}") from exc
