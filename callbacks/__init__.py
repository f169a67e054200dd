"""Lightning callbacks of the framework, switched on from YAML under ``trainer.callbacks`` as
``callbacks.<Name>`` (one spelling for every callback).

- inspection (configs/inspect.yaml): ``ConfusionMatrix``, ``FilterVisualisation``, ``ConfidentMistakes``,
  ``LabelNoiseDiagnostics``, ``HParamsMetrics``, ``MislabelDetection``, ``KNNMonitor``;
- training recipe: ``PatchWhitening``, ``Lookahead``, ``Performance`` (channels_last, compile);
- runs and checkpoints (train.py adds most by itself): ``BestAndLastCheckpoint``, ``PeriodicCheckpoint``,
  ``ExactResume``, ``FiniteLossGuard``, ``TestOracle``, ``WithoutValidationSet``, ``ReleaseHeldLogs``,
  ``HeldOutPredictions`` (cross-validation), and the ``AtomicCheckpointIO`` plugin.

They are imported lazily (PEP 562): importing one callback module does not pull in matplotlib.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "AtomicCheckpointIO": "atomic_checkpoint",
    "BestAndLastCheckpoint": "best_and_last",
    "ConfidentMistakes": "mistakes",
    "ConfusionMatrix": "confusion",
    "ExactResume": "exact_resume",
    "FilterVisualisation": "filters",
    "FiniteLossGuard": "finite_loss",
    "HeldOutPredictions": "cross_validation",
    "HParamsMetrics": "hparams",
    "KNNMonitor": "knn",
    "LabelNoiseDiagnostics": "noise_diagnostics",
    "Lookahead": "lookahead",
    "MislabelDetection": "detection",
    "PatchWhitening": "patch_whitening",
    "Performance": "performance",
    "PeriodicCheckpoint": "periodic_checkpoint",
    "ReleaseHeldLogs": "held_logs",
    "TestOracle": "test_oracle",
    "WithoutValidationSet": "without_validation",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
