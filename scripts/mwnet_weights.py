#!/usr/bin/env python
"""Which training samples does a trained Meta-Weight-Net weight down? (docs/results.md)

Loads a MetaWeightNet checkpoint (e.g. the ``mwnet`` cell of scripts/matrix/mwnet_vs_ce_cpu.yaml), rebuilds the
same training split from the run's saved ``noisy_labels.npz``, and scores every
training image: its loss under the checkpoint's classifier (eval mode) and the weight
the weighting net gives that loss. Flipped samples share their noisy label with
correctly labelled ones, so the comparison that matters is *within a noisy label*:
among the images labelled "cat", are the dogs weighted less than the cats? Prints the
weighting function on a grid of losses, the mean weights per noisy label, and the
AUROC of "weight below" for telling flipped from correct samples.

    python scripts/mwnet_weights.py runs/matrix/mwnet_vs_ce_cpu/asym40/mwnet/seed0/version_0/checkpoints/best-*.ckpt \
        --labels runs/matrix/mwnet_vs_ce_cpu/asym40/noisy_labels.npz --train-subset 3000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from callbacks.noise_diagnostics import loss_auroc
from datamodules import NoisyCIFAR10
from lightning_modules import MetaWeightNet


@torch.no_grad()
def score(model: MetaWeightNet, dm: NoisyCIFAR10, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample loss (against the noisy label) and weight for every training image, in index order."""
    model.eval()
    idx = dm.train_indices
    losses = []
    for start in range(0, len(idx), batch_size):
        i = idx[start:start + batch_size]
        images = dm.eval_transform(dm.training_set_images(i))
        losses.append(model.per_sample_loss(model(images), dm.noisy_targets[i]))
    losses = torch.cat(losses)
    return losses, model.weighting_net(losses).flatten()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--labels", required=True, help="the run's noisy_labels.npz")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--train-subset", type=int, default=None)
    p.add_argument("--val-size", type=int, default=1000)
    p.add_argument("--meta-size", type=int, default=10)
    p.add_argument("--out", default=None, help="write the numbers as JSON here too")
    args = p.parse_args()

    model = MetaWeightNet.load_from_checkpoint(args.checkpoint, map_location="cpu")  # backbone from its saved spec
    dm = NoisyCIFAR10(data_dir=args.data_dir, batch_size=100, val_size=args.val_size, train_subset=args.train_subset,
                      meta_size=args.meta_size, noisy_labels_path=args.labels, augmentation="none")
    dm.setup("fit")
    losses, weights = score(model, dm)
    noisy, clean = dm.noisy_targets[dm.train_indices], dm.clean_targets[dm.train_indices]
    flipped = noisy != clean

    grid = torch.tensor([0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    curve = model.weighting_net(grid).flatten()
    points = zip(grid.tolist(), curve.tolist())
    print("weighting function V(loss): " + ", ".join(f"{g:.2f}->{v:.3f}" for g, v in points))
    print("| noisy label | correct: n, mean loss, mean weight | flipped: n, mean loss, mean weight | AUROC |")
    print("|---|---|---|---|")
    rows = []
    for c in range(dm.num_classes):
        m = noisy == c
        f, k = m & flipped, m & ~flipped
        if not f.any():
            continue
        auc = loss_auroc(-weights[m], flipped[m])  # 1.0: every flipped sample weighted below
        rows.append({"label": dm.class_names[c] if hasattr(dm, "class_names") else c, "auroc": auc,
                     "correct": [int(k.sum()), float(losses[k].mean()), float(weights[k].mean())],
                     "flipped": [int(f.sum()), float(losses[f].mean()), float(weights[f].mean())]})
        r = rows[-1]
        print(f"| {r['label']} | {r['correct'][0]}, {r['correct'][1]:.2f}, {r['correct'][2]:.3f} "
              f"| {r['flipped'][0]}, {r['flipped'][1]:.2f}, {r['flipped'][2]:.3f} | {auc:.3f} |")
    affected = torch.isin(noisy, noisy[flipped].unique())
    overall = loss_auroc(-weights[affected], flipped[affected])
    print(f"AUROC (labels that receive flipped samples): {overall:.3f}; "
          f"mean weight correct {weights[~flipped].mean():.3f}, flipped {weights[flipped].mean():.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"curve": dict(zip(grid.tolist(), curve.tolist())), "per_label": rows,
                                              "auroc_affected_labels": overall}, indent=2))


if __name__ == "__main__":
    main()
