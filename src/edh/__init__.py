"""edh: deep-learning models from three roles, Encoder -> [Decoder] -> Heads.

Heavy modules import lazily, so ``import edh`` and ``edh --help`` stay fast.
"""

from __future__ import annotations

from typing import Any

from edh.version import __version__

__all__ = ["__version__", "build", "Model", "FeatureSpec", "list_components", "load_run"]


def __getattr__(name: str) -> Any:
    if name in ("build", "Model"):
        from edh.core import model

        return getattr(model, name)
    if name == "FeatureSpec":
        from edh.core.features import FeatureSpec

        return FeatureSpec
    if name == "list_components":
        from edh.inspection.catalog import list_components

        return list_components
    if name == "load_run":
        from edh.workflows.run import load_run

        return load_run
    raise AttributeError(f"module 'edh' has no attribute {name!r}")
