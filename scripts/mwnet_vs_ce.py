#!/usr/bin/env python
"""CPU-scale comparison: Meta-Weight-Net against plain CE on the same noisy CIFAR-10 subset.

Both runs use the same backbone, the same training images (the meta set is held
out of BOTH, so CE does not see the 10 x ``meta_size`` clean images with noisy
labels that MW-Net never sees either), the same saved noisy labels
(``noisy_labels.npz`` written once, then read back through
``noisy_labels_path``), the same optimiser, schedule and epoch budget. CE simply
ignores the meta set. Test accuracy is reported for the last epoch and for the
epoch of best *noisy* validation accuracy (never the best test epoch).

    OMP_NUM_THREADS=1 nice -n 5 python scripts/mwnet_vs_ce.py --data-dir data --out runs/mwnet_vs_ce \
        --train-subset 4000 --epochs 6 --width 0.125 --method both
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datamodules import NoisyCIFAR10  # noqa: E402
from datamodules.noisy_cifar import save_noisy_labels  # noqa: E402
from lightning_modules import Classifier, MetaWeightNet  # noqa: E402
from lightning_modules.backbones import CNN, ConvNet6  # noqa: E402


class TrainSetOnly(NoisyCIFAR10):
    """The same split (meta set held out), but only the noisy training loader: what CE gets."""

    def train_dataloader(self):
        loader = super().train_dataloader()
        return loader.iterables["train"] if self.hparams.meta_size else loader


def data_kwargs(args: argparse.Namespace, labels: Path | None) -> dict:
    return dict(
        data_dir=args.data_dir, batch_size=args.batch_size, val_size=args.val_size, train_subset=args.train_subset,
        noise_type=args.noise_type, noise_rate=args.noise_rate, noise_seed=args.noise_seed, meta_size=args.meta_size,
        noisy_labels_path=str(labels) if labels else None, augmentation=args.augmentation,
    )


def make_backbone(args: argparse.Namespace) -> torch.nn.Module:
    """The co-teaching CNN at ``--width``, or ConvNet6 (dropout off), the encoder of configs/simclr/cpu_cifar10.yaml."""
    return CNN(n_outputs=10, width=args.width) if args.backbone == "cnn" else ConvNet6(n_outputs=10, dropout_rate=0.0)


def run(method: str, args: argparse.Namespace, labels: Path) -> dict:
    pl.seed_everything(args.seed, workers=True)
    backbone = make_backbone(args)
    sgd = lambda p: torch.optim.SGD(p, lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)  # noqa: E731
    milestones = [int(args.epochs * 2 / 3), int(args.epochs * 5 / 6)]  # 80/120 and 100/120 of the paper
    common = dict(backbone=backbone, num_classes=10, optimizer=sgd, lr_schedule="multistep", milestones=milestones,
                  init_from=args.init_from)
    if method == "mwnet":
        model, dm = MetaWeightNet(weight_norm=args.weight_norm, **common), NoisyCIFAR10(**data_kwargs(args, labels))
    else:
        model, dm = Classifier(**common), TrainSetOnly(**data_kwargs(args, labels))
    # no save_last: Lightning 2.6 rewrites last.ckpt only in epochs that also save a top-k checkpoint,
    # so it would hold the best-val weights; the last epoch is tested from memory instead
    ckpt = ModelCheckpoint(monitor="val/acc", mode="max", filename="best-epoch{epoch:03d}",
                           auto_insert_metric_name=False)
    trainer = pl.Trainer(
        max_epochs=args.epochs, accelerator="cpu", devices=1, enable_progress_bar=False, callbacks=[ckpt],
        logger=TensorBoardLogger(args.out, name=method), enable_model_summary=False,
    )
    t0 = time.time()
    trainer.fit(model, datamodule=dm)
    fit_s = time.time() - t0
    train_metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    last = trainer.test(model, datamodule=dm, verbose=False)[0]  # the weights after the last epoch
    best = trainer.test(model, datamodule=dm, ckpt_path=ckpt.best_model_path, verbose=False)[0]
    result = {
        "method": method, "fit_seconds": round(fit_s, 1), "epochs": args.epochs,
        "train_images": len(dm.train_indices), "meta_images": len(dm.meta_indices),
        "test_acc_last": last["test/acc"], "test_acc_best_val": best["test/acc"],
        "best_val_acc_noisy": float(ckpt.best_model_score), "best_checkpoint": ckpt.best_model_path,
        "log_dir": trainer.log_dir, "train_metrics_last_epoch": train_metrics,
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="data")
    p.add_argument("--out", default="runs/mwnet_vs_ce")
    p.add_argument("--method", choices=["mwnet", "ce", "both"], default="both")
    p.add_argument("--train-subset", type=int, default=10000)
    p.add_argument("--val-size", type=int, default=1000)
    p.add_argument("--meta-size", type=int, default=10, help="clean meta images per class")
    p.add_argument("--noise-type", default="asymmetric")
    p.add_argument("--noise-rate", type=float, default=0.4)
    p.add_argument("--noise-seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=100, help="paper: 100")
    p.add_argument("--lr", type=float, default=0.1, help="paper: SGD 0.1, momentum 0.9, nesterov, wd 5e-4")
    p.add_argument("--augmentation", default="crop_flip", help="crop_flip (paper) or none (memorises sooner)")
    p.add_argument("--backbone", choices=["cnn", "convnet6"], default="cnn")
    p.add_argument("--width", type=float, default=0.25, help="channel multiplier of the co-teaching CNN")
    p.add_argument("--init-from", default=None, help="a SimCLR checkpoint: both methods start from its encoder")
    p.add_argument("--weight-norm", default="sum", choices=["sum", "batch", "none"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    labels = out / "noisy_labels.npz"
    if not labels.is_file():  # draw the noise once; every run below reads this file back
        dm = NoisyCIFAR10(**data_kwargs(args, None))
        dm.setup("fit")
        save_noisy_labels(dm, labels)
    methods = ["mwnet", "ce"] if args.method == "both" else [args.method]
    results = [run(m, args, labels) for m in methods]
    with open(out / f"results_{args.method}.json", "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
