"""Event stores: one small interface (:mod:`soc.store.base`), one module per backend."""
