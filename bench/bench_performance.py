#!/usr/bin/env python
"""Training time per epoch of each backbone (9-layer CNN, SmallVGG, ResNet-18, AirbenchNet) with each
speed knob, against plain fp32.

Runs ``Trainer.fit`` for one epoch (after a warm-up epoch that is not timed:
cuDNN autotuning and torch.compile happen there) of ``Classifier`` on CIFAR-10
(the real training set when ``--data-dir`` holds it, else random uint8 images
of the same size) for each variant, all in the same process:

    fp32                 precision 32-true, data copied to the device per batch
    bf16                 precision bf16-mixed
    fp16                 precision 16-mixed (GPU only)
    bf16+cl              + channels_last (callbacks.Performance)
    bf16+cl+resident     + data.resident_on_device
    bf16+cl+resident+compile  + torch.compile of the backbone

and prints seconds per epoch and the ratio to ``fp32`` measured in the same run.

    python bench/bench_performance.py --device gpu [--data-dir data] [--images 50000] [--batch-size 128]
    python bench/bench_performance.py --device cpu --images 2048 --nets cnn --variants fp32,bf16   # smoke
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from datamodules import NoisyCIFAR10  # noqa: E402
from lightning_modules import Classifier  # noqa: E402
from lightning_modules.backbones import CNN, AirbenchNet, ResNet, SmallVGG  # noqa: E402
from callbacks.performance import Performance  # noqa: E402

VARIANTS = {
    "fp32": dict(precision="32-true"),
    "bf16": dict(precision="bf16-mixed"),
    "fp16": dict(precision="16-mixed"),
    "bf16+cl": dict(precision="bf16-mixed", channels_last=True),
    "bf16+cl+resident": dict(precision="bf16-mixed", channels_last=True, resident=True),
    "bf16+cl+resident+compile": dict(precision="bf16-mixed", channels_last=True, resident=True, compile=True),
}
NETS = {
    "cnn": lambda: CNN(n_outputs=10),
    "smallvgg": lambda: SmallVGG(n_outputs=10),
    "resnet18": lambda: ResNet(18, n_outputs=10),
    "airbench": lambda: AirbenchNet(n_outputs=10),
}


class EpochTimer(pl.Callback):
    def __init__(self):
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._t = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._t)


def ensure_data(data_dir: Path, n: int) -> Path:
    if (data_dir / "cifar-10-batches-py").is_dir():
        return data_dir
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from fake_cifar import write_fake_cifar10

    out = Path("/tmp/bench_fake_cifar10")
    if not (out / "cifar-10-batches-py").is_dir():
        write_fake_cifar10(out, n_train=n, n_test=100)
    return out


def epoch_seconds(net: str, variant: dict, args) -> float:
    pl.seed_everything(0)
    dm = NoisyCIFAR10(data_dir=str(args.data_dir), batch_size=args.batch_size, val_size=0,
                      train_subset=args.images, resident_on_device=variant.get("resident", False))
    timer = EpochTimer()
    callbacks = [timer]
    if variant.get("channels_last") or variant.get("compile"):
        callbacks.append(Performance(channels_last=variant.get("channels_last", False),
                                     compile=variant.get("compile", False)))
    trainer = pl.Trainer(accelerator=args.device, devices=1, precision=variant["precision"], max_epochs=2,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                         callbacks=callbacks)
    model = Classifier(NETS[net](), optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9))
    trainer.fit(model, datamodule=dm)
    return timer.times[-1]  # the second epoch: warm-up (autotune, compilation) excluded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="gpu", choices=["gpu", "cpu"])
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--images", type=int, default=45000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--nets", default="cnn,resnet18", help=f"comma-separated, from {','.join(NETS)}")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    args.data_dir = ensure_data(args.data_dir, max(args.images, 1000))
    card = torch.cuda.get_device_name(0) if args.device == "gpu" else "CPU"
    print(f"device: {card}; torch {torch.__version__}; {args.images} images/epoch, batch {args.batch_size}")
    for net in args.nets.split(","):
        base = None
        for name in args.variants.split(","):
            if name == "fp16" and args.device == "cpu":
                continue
            seconds = epoch_seconds(net, VARIANTS[name], args)
            base = base or seconds
            print(f"{net:9s} {name:26s} {seconds:8.2f} s/epoch   {base / seconds:5.2f}x vs fp32", flush=True)


if __name__ == "__main__":
    main()
