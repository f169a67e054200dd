"""Lightning callbacks of the framework, switched on from YAML under ``trainer.callbacks``.

Inspection (issue 5; see configs/inspect.yaml): ``ConfusionMatrix``,
``FilterVisualisation``, ``ConfidentMistakes``, ``LabelNoiseDiagnostics``,
``HParamsMetrics``. They are imported lazily (PEP 562) so that importing
another callback module of this package does not pull in matplotlib.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "ConfusionMatrix": "confusion",
    "FilterVisualisation": "filters",
    "ConfidentMistakes": "mistakes",
    "LabelNoiseDiagnostics": "noise_diagnostics",
    "HParamsMetrics": "hparams",
    "PatchWhitening": "patch_whitening",
    "Lookahead": "lookahead",
    "MislabelDetection": "detection",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
