#!/usr/bin/env python
"""Write the CIFAR-10 copy in ``--data-dir`` out as a class-folder tree of image files.

    root/train/<class>/<index>.png   (index = position in the official training set)
    root/test/<class>/<index>.png

so that ``NoisyImageFolder`` can be tried on real images:

    python scripts/cifar10_to_folder.py --data-dir data --out data/cifar10_folder --per-class 500
    python train.py fit --config configs/folder.yaml --data.init_args.root data/cifar10_folder

``--per-class`` keeps the first N images of every class (in the official order)
for a quick subset; ``--format jpg`` writes JPEG (quality 95) instead of PNG.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from datamodules import cifar_source


def write_split(split: cifar_source.CifarSplit, names: list[str], out: Path, per_class: int | None, fmt: str) -> int:
    counts = [0] * len(names)
    for name in names:
        (out / name).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(split.images, split.labels.tolist())):
        if per_class is not None and counts[label] >= per_class:
            continue
        counts[label] += 1
        pil = Image.fromarray(image.permute(1, 2, 0).numpy())
        pil.save(out / names[label] / f"{i:05d}.{fmt}", **({"quality": 95} if fmt == "jpg" else {}))
    return sum(counts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="data", help="holds cifar-10-batches-py")
    p.add_argument("--out", default="data/cifar10_folder")
    p.add_argument("--per-class", type=int, default=None, help="training images per class (default: all)")
    p.add_argument("--test-per-class", type=int, default=None, help="test images per class (default: all)")
    p.add_argument("--format", choices=["png", "jpg"], default="png")
    args = p.parse_args()
    spec = cifar_source.CIFAR10
    folder = cifar_source.prepare(spec, args.data_dir, download=False)
    names = cifar_source.read_class_names(spec, folder)
    out = Path(args.out)
    for train, split_name, limit in ((True, "train", args.per_class), (False, "test", args.test_per_class)):
        n = write_split(cifar_source.read_split(spec, folder, train=train), names, out / split_name, limit, args.format)
        print(f"{split_name}: {n} images -> {out / split_name}")


if __name__ == "__main__":
    main()
