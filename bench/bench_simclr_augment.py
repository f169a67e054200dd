#!/usr/bin/env python
"""Two-view SimCLR augmentation throughput: batched on-device path vs lightly's per-sample transform.

(a) ``datamodules.simclr_augment.SimCLRAugment`` on whole uint8 batches (what the
    datamodule runs in ``on_after_batch_transfer``), torch on ``--threads`` threads (default 1:
    on a CPU shared with other work one thread is the honest, conservative choice);
(b) lightly's ``SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)``
    (the CIFAR settings of lightly's benchmark) on PIL images in a DataLoader with
    ``num_workers`` = the machine's cores, collating the two views into tensors.

Both produce two normalised float views of every image. The two are measured
alternately in the same run (``--rounds``), so load from other processes hits
both alike; the ratio of the medians is printed. Usage:

    python bench/bench_simclr_augment.py [--data-dir data] [--images 4096] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from datamodules.augment import CIFAR10_MEAN, CIFAR10_STD  # noqa: E402
from datamodules.simclr_augment import SimCLRAugment  # noqa: E402


def load_images(data_dir: str, n: int) -> torch.Tensor:
    """First ``n`` real CIFAR-10 training images when ``data_dir`` has them, else random pixels."""
    try:
        from datamodules import cifar_source

        folder = cifar_source.prepare(cifar_source.CIFAR10, data_dir, download=False)
        return cifar_source.read_split(cifar_source.CIFAR10, folder, train=True).images[:n].contiguous()
    except Exception as err:  # noqa: BLE001 - any failure: fall back to random images
        print(f"(no CIFAR-10 in {data_dir}: {err}; using random images)")
        return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)


class PILDataset(Dataset):
    def __init__(self, images: torch.Tensor, transform):
        self.pil = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pil)

    def __getitem__(self, i: int):
        return self.transform(self.pil[i])  # [view1, view2]


def time_batched(images: torch.Tensor, batch_size: int) -> float:
    aug = SimCLRAugment(CIFAR10_MEAN, CIFAR10_STD)
    aug(images[:batch_size])  # warm-up
    t0 = time.perf_counter()
    for start in range(0, len(images), batch_size):
        out = aug(images[start:start + batch_size])
        assert out["view1"].shape[0] == len(images[start:start + batch_size])
    return len(images) / (time.perf_counter() - t0)


def time_lightly(loader: DataLoader, n: int) -> float:
    t0 = time.perf_counter()
    seen = 0
    for v1, v2 in loader:
        seen += len(v1)
    assert seen == n
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="lightly's loader workers")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the batched path")
    args = parser.parse_args()
    from lightly.transforms import SimCLRTransform

    torch.set_num_threads(args.threads)
    images = load_images(args.data_dir, args.images)
    lightly_tf = SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0,
                                 normalize={"mean": list(CIFAR10_MEAN), "std": list(CIFAR10_STD)})
    loader = DataLoader(PILDataset(images, lightly_tf), batch_size=args.batch_size, num_workers=args.workers,
                        persistent_workers=True)
    time_lightly(loader, len(images))  # warm-up: start the workers
    batched, reference = [], []
    for r in range(args.rounds):
        batched.append(time_batched(images, args.batch_size))
        reference.append(time_lightly(loader, len(images)))
        print(f"round {r + 1}: batched {batched[-1]:,.0f} img/s   lightly SimCLRTransform {reference[-1]:,.0f} img/s")
    b, ref = statistics.median(batched), statistics.median(reference)
    print(f"{len(images)} images x 2 views, batch {args.batch_size}, batched on {args.threads} thread(s), "
          f"lightly with {args.workers} loader workers, "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs")
    print(f"batched SimCLRAugment: {b:,.0f} images/s (two views)")
    print(f"lightly SimCLRTransform in DataLoader(num_workers={args.workers}): {ref:,.0f} images/s (two views)")
    print(f"ratio: {b / ref:.1f}x")


if __name__ == "__main__":
    main()
