"""Load a pretrained encoder (``features`` of a Backbone) into a new backbone; export it on its own.

Sources, recognised by their keys:
- a Lightning checkpoint of SimCLR or Classifier (``state_dict`` keys ``backbone.features.*``),
  or of a two-network method (``<net>.features.*``: the first network in the checkpoint is used);
- an exported encoder file (``{"state_dict": {"features.*": ...}}``), written by

      python -m lightning_modules.pretrained export runs/simclr/version_0/checkpoints/last.ckpt encoder.pt

Only the encoder is loaded, and it must match exactly: every tensor of
``backbone.features`` (parameters and batch-norm buffers) must be in the file with
the same shape, and the file must hold no other encoder tensor. Anything else is
a clear error naming the key, so that a checkpoint of another architecture can
never be half-loaded. The ``head`` keeps its fresh initialisation.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from torch import nn

from datamodules.atomic_files import atomic_torch_save

FEATURES = "features."


def read_state_dict(ckpt_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a Lightning checkpoint or exported encoder (loaded with ``weights_only=True``)."""
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"init_from checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors come in many types
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {err}") from err
    state = obj.get("state_dict") if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path} has no 'state_dict' (expected a Lightning checkpoint or an exported encoder)")
    return state


def encoder_prefix(state: dict[str, torch.Tensor], source: str = "checkpoint") -> str:
    """Key prefix of the encoder: ``backbone.features.``, ``features.``, ``<net>.features.`` (first network)."""
    prefixes: list[str] = []
    for key in state:
        pos = key.find(FEATURES)
        if pos == 0 or (pos > 0 and key[pos - 1] == "."):
            prefix = key[: pos + len(FEATURES)]
            if prefix not in prefixes:
                prefixes.append(prefix)
    if not prefixes:
        raise ValueError(f"{source} holds no encoder tensors (no key containing '{FEATURES}')")
    for preferred in ("backbone." + FEATURES, FEATURES):
        if preferred in prefixes:
            return preferred
    return prefixes[0]


def encoder_state(state: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The encoder tensors of ``state`` with keys relative to ``features``."""
    prefix = encoder_prefix(state, source)
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def load_backbone_weights(backbone: nn.Module, ckpt_path: str | os.PathLike) -> None:
    """Copy the encoder tensors of ``ckpt_path`` into ``backbone.features`` (in place); the head is untouched.

    Raises ``ValueError`` naming the first key that is missing, unexpected or misshaped.
    """
    if not hasattr(backbone, "features"):
        raise ValueError(f"init_from needs a backbone with `features`; {type(backbone).__name__} has none")
    source = str(ckpt_path)
    loaded = encoder_state(read_state_dict(ckpt_path), source)
    target = backbone.features.state_dict()
    missing = [k for k in target if k not in loaded]
    if missing:
        raise ValueError(
            f"{source} does not fit {type(backbone).__name__}: encoder tensor 'features.{missing[0]}' is missing "
            f"({len(missing)} of {len(target)} missing; was it saved from another architecture?)"
        )
    unexpected = [k for k in loaded if k not in target]
    if unexpected:
        raise ValueError(
            f"{source} does not fit {type(backbone).__name__}: it has encoder tensor 'features.{unexpected[0]}' "
            f"that the backbone lacks ({len(unexpected)} unexpected; saved from another architecture?)"
        )
    for key, value in target.items():
        if loaded[key].shape != value.shape:
            raise ValueError(
                f"{source} does not fit {type(backbone).__name__}: 'features.{key}' has shape "
                f"{tuple(loaded[key].shape)} in the checkpoint but {tuple(value.shape)} in the backbone "
                f"(another width or depth?)"
            )
    backbone.features.load_state_dict(loaded, strict=True)


def init_encoder(
    backbone: nn.Module, init_from: str | None, freeze_backbone: bool = False, backbone_lr: float | None = None
) -> None:
    """The fine-tuning options of a classifier-like module, applied to its backbone.

    Loads ``init_from`` (if given) and freezes the encoder's parameters when
    ``freeze_backbone``; checks the options first so a bad value fails before any loading.
    """
    if backbone_lr is not None and backbone_lr < 0:
        raise ValueError(f"backbone_lr must be >= 0, got {backbone_lr}")
    if freeze_backbone and backbone_lr is not None:
        raise ValueError("freeze_backbone and backbone_lr contradict each other: a frozen encoder has no lr")
    if (freeze_backbone or backbone_lr is not None) and not hasattr(backbone, "features"):
        raise ValueError(
            f"freeze_backbone / backbone_lr need a backbone with `features`; {type(backbone).__name__} has none"
        )
    if init_from:
        load_backbone_weights(backbone, init_from)
    if freeze_backbone:
        backbone.features.requires_grad_(False)


def param_groups(params: list[nn.Parameter], backbone: nn.Module, backbone_lr: float | None) -> list[dict]:
    """``params`` as optimiser groups; those of ``backbone``'s encoder in their own group at ``backbone_lr``
    when given (first, as the fine-tuning recipes list them)."""
    if backbone_lr is None:
        return [{"params": list(params)}]
    encoder = {id(p) for p in backbone.features.parameters()}
    enc = [p for p in params if id(p) in encoder]
    rest = [p for p in params if id(p) not in encoder]
    return [{"params": enc, "lr": backbone_lr}, {"params": rest}]


def export_encoder(ckpt_path: str | os.PathLike, out_path: str | os.PathLike) -> int:
    """Write the encoder of ``ckpt_path`` to ``out_path`` as ``{"state_dict": {"features.*": ...}}``.

    Returns the number of tensors written. The file is written atomically.
    """
    source = str(ckpt_path)
    enc = encoder_state(read_state_dict(ckpt_path), source)
    atomic_torch_save({"state_dict": {FEATURES + k: v for k, v in enc.items()}, "source": source}, Path(out_path))
    return len(enc)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lightning_modules.pretrained", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="write the encoder (features.*) of a checkpoint to its own file")
    exp.add_argument("checkpoint", help="Lightning checkpoint of SimCLR / Classifier / a two-network method")
    exp.add_argument("output", help="where to write the encoder, e.g. encoder.pt")
    args = parser.parse_args(argv)
    n = export_encoder(args.checkpoint, args.output)
    print(f"wrote {n} encoder tensors from {args.checkpoint} to {args.output}")


if __name__ == "__main__":
    main()
