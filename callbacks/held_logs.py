"""Lightning's start-up lines held back until the run starts, so that an input error found while
setting up is the first line the user sees (train.py)."""

from __future__ import annotations

import logging
import logging.handlers

import pytorch_lightning as pl


class HeldLogs:
    """Holds the start-up lines of Lightning's loggers (devices, tips, "Restoring states ...") until the
    run starts, so that an input error found while setting up is the first line the user sees."""

    NAMES = ("pytorch_lightning", "lightning_fabric")

    def __init__(self):
        self.buffer = logging.handlers.BufferingHandler(capacity=10_000)
        self.saved: dict[str, list[logging.Handler]] | None = None

    def hold(self) -> None:
        self.saved = {}
        for name in self.NAMES:
            lg = logging.getLogger(name)
            self.saved[name] = lg.handlers[:]
            lg.handlers = [self.buffer]

    def release(self, discard: bool = False) -> None:
        """Restore the loggers' own handlers and (unless ``discard``) pass them what was held."""
        if self.saved is None:
            return
        for name, handlers in self.saved.items():
            logging.getLogger(name).handlers = handlers
        if not discard:
            for record in self.buffer.buffer:
                for handler in self.saved.get(record.name.split(".")[0], []):
                    if record.levelno >= handler.level:
                        handler.handle(record)
        self.buffer.buffer.clear()
        self.saved = None


class ReleaseHeldLogs(pl.Callback):
    """Prints the held start-up lines once the run starts (training, validation, testing or predicting)."""

    def __init__(self, held: HeldLogs):
        self.held = held

    def _release(self, *args) -> None:
        self.held.release()

    on_train_start = on_validation_start = on_test_start = on_predict_start = _release
