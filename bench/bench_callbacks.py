#!/usr/bin/env python
"""Cost of the inspection callbacks: epoch time with and without them, same run otherwise.

    python bench/bench_callbacks.py --data-dir data --train-subset 5000 --epochs 5 --repeats 2
    python bench/bench_callbacks.py --fake          # tiny learnable fake CIFAR-10, no data needed

Both arms use the TensorBoard logger, the same seed, model (co-teaching CNN,
``--width``) and data; the "with" arm adds the callbacks of
configs/inspect.yaml at their default intervals (confusion matrix and filters
every 5 epochs, noise diagnostics every epoch). An epoch is timed from
``on_train_epoch_start`` to ``on_train_epoch_end`` (which Lightning calls after
the epoch's validation), so the validation-time confusion matrix counts; the
first epoch (warm-up) is dropped and the mean of the others is compared
(epochs 2..5 contain one epoch with every callback on).
Arms alternate (without, with, without, with, ...) so that a change in
machine load hits both. Times are process CPU seconds (``time.process_time``,
one torch thread), which a busy shared machine disturbs far less than wall
time; wall time is printed too. The "with" arm also sums the CPU time spent
inside the callbacks' own hooks, a direct measure that needs no second arm.
The test pass (confusion matrix, per-class table, mistakes grid) is timed
separately on ``--test-batches`` batches. Prints the ratios with / without.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

REPO = Path(__file__).resolve().parents[1]

from callbacks import ConfidentMistakes, ConfusionMatrix, FilterVisualisation, HParamsMetrics  # noqa: E402
from callbacks import LabelNoiseDiagnostics  # noqa: E402
from datamodules import NoisyCIFAR10  # noqa: E402
from lightning_modules import Classifier  # noqa: E402
from lightning_modules.backbones import CNN  # noqa: E402


class EpochTimer(pl.Callback):
    """CPU and wall time of each epoch, training start to ``on_train_epoch_end`` (after validation).

    Must be the last callback, so that the others' epoch-end hooks fall inside the interval.
    """

    def __init__(self):
        self.times: list[float] = []
        self.wall: list[float] = []
        self._t0 = self._w0 = 0.0

    def on_train_epoch_start(self, trainer, pl_module):
        self._t0, self._w0 = time.process_time(), time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.times.append(time.process_time() - self._t0)
        self.wall.append(time.perf_counter() - self._w0)


def time_hooks(callbacks: list[pl.Callback], spent: dict[str, float]) -> None:
    """Wrap every hook a callback overrides so that its CPU time adds up in ``spent[phase]``."""
    for cb in callbacks:
        for name in dir(pl.Callback):
            if not name.startswith("on_") or getattr(type(cb), name) is getattr(pl.Callback, name):
                continue
            phase = "test" if "test" in name else "fit"

            def wrapped(*a, _f=getattr(cb, name), _p=phase, **k):
                t = time.process_time()
                try:
                    return _f(*a, **k)
                finally:
                    spent[_p] += time.process_time() - t

            setattr(cb, name, wrapped)


def inspection_callbacks() -> list[pl.Callback]:
    """The callbacks of configs/inspect.yaml with their default intervals."""
    return [ConfusionMatrix(every_n_epochs=5), FilterVisualisation(every_n_epochs=5, feature_maps=True),
            ConfidentMistakes(k=16), LabelNoiseDiagnostics(every_n_epochs=1), HParamsMetrics()]


def one_run(args, data_dir: str, with_callbacks: bool, out: Path) -> tuple[EpochTimer, float, dict[str, float]]:
    pl.seed_everything(0, verbose=False)
    dm = NoisyCIFAR10(data_dir=data_dir, batch_size=args.batch_size, val_size=args.val_size,
                      train_subset=args.train_subset, noise_type="symmetric", noise_rate=0.4)
    model = Classifier(CNN(width=args.width))
    timer = EpochTimer()
    inspection = inspection_callbacks() if with_callbacks else []
    spent = {"fit": 0.0, "test": 0.0}
    time_hooks(inspection, spent)
    cbs = inspection + [timer]
    trainer = pl.Trainer(
        max_epochs=args.epochs, accelerator="cpu", logger=pl.loggers.TensorBoardLogger(out, default_hp_metric=False),
        callbacks=cbs, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_test_batches=args.test_batches,
    )
    trainer.fit(model, datamodule=dm)
    t0 = time.process_time()
    trainer.test(model, datamodule=dm, verbose=False)
    return timer, time.process_time() - t0, spent


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="data")
    p.add_argument("--fake", action="store_true", help="use a generated fake CIFAR-10 (500 train / 200 test)")
    p.add_argument("--train-subset", type=int, default=5000)
    p.add_argument("--val-size", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--test-batches", type=int, default=10, help="test batches (of 2 x batch size) timed")
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error(f"--epochs must be >= 2 (the first epoch is dropped), got {args.epochs}")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir
        if args.fake:
            sys.path.insert(0, str(REPO / "tests"))
            from fake_cifar import write_fake_cifar10

            write_fake_cifar10(Path(tmp) / "fake")
            data_dir, args.train_subset, args.val_size = str(Path(tmp) / "fake"), None, 100
        epochs: dict[bool, list[float]] = {False: [], True: []}
        walls: dict[bool, list[float]] = {False: [], True: []}
        tests: dict[bool, list[float]] = {False: [], True: []}
        hooks = {"fit": 0.0, "test": 0.0}
        for r in range(args.repeats):
            for arm in (False, True):
                timer, test_s, spent = one_run(args, data_dir, arm, Path(tmp) / f"r{r}_{int(arm)}")
                epochs[arm] += timer.times[1:]
                walls[arm] += timer.wall[1:]
                tests[arm].append(test_s)
                hooks = {k: hooks[k] + spent[k] for k in hooks}
                print(f"repeat {r} {'with' if arm else 'without'} callbacks: epoch CPU "
                      f"{', '.join(f'{t:.2f}' for t in timer.times)} s "
                      f"(wall {', '.join(f'{t:.1f}' for t in timer.wall)}); "
                      f"test CPU {test_s:.2f} s; inside callback hooks: "
                      f"fit {spent['fit']:.2f} s, test {spent['test']:.2f} s",
                      flush=True)
    base, cb = statistics.mean(epochs[False]), statistics.mean(epochs[True])
    wb, wc = statistics.mean(walls[False]), statistics.mean(walls[True])
    tb, tc = statistics.mean(tests[False]), statistics.mean(tests[True])
    fit_cpu_with = sum(epochs[True]) / len(epochs[True]) * args.epochs * args.repeats  # approx., all epochs
    print(f"epoch CPU (mean of epochs 2..{args.epochs}, {args.repeats} repeats): without {base:.3f} s, "
          f"with {cb:.3f} s, ratio {cb / base:.3f} ({100 * (cb / base - 1):+.1f}%); wall ratio {wc / wb:.3f}")
    print(f"CPU inside the callbacks' hooks during fit: {hooks['fit']:.2f} s of about {fit_cpu_with:.1f} s "
          f"({100 * hooks['fit'] / fit_cpu_with:.1f}%)")
    print(f"test pass CPU: without {tb:.3f} s, with {tc:.3f} s, ratio {tc / tb:.3f}")


if __name__ == "__main__":
    main()
