"""What a checkpoint records about the data, so that a resumed run trains on the same labels.

A datamodule's ``state_dict`` goes into every Lightning checkpoint and its
``load_state_dict`` runs when a run resumes (or a checkpoint is tested),
after ``setup`` has built the labels from the configuration. The noisy labels
and the split are pure functions of the seeds, so ``setup`` re-creates the
same ones; this module *checks* that, with a fingerprint of the labels and
indices, and refuses to go on when they differ (a different ``noise_seed``,
``split_seed``, ``train_subset``, another dataset, ...): a resumed run must not
silently continue on other labels. To resume on exactly the labels of a run
whatever the configuration says, pass ``data.noisy_labels_path`` pointing to
that run's ``noisy_labels.npz``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .contracts import NoisyData
from .corrected_labels import left_out
from .plain_npz import read_npz

#: datamodule attributes whose exact contents define what is trained and validated on
FINGERPRINTED = ("noisy_targets", "clean_targets", "train_indices", "val_indices", "meta_indices")
#: settings reported in the error when the fingerprints differ
SETTINGS = ("noise_type", "noise_rate", "noise_seed", "split_seed", "val_size", "train_subset", "noisy_labels_path")


def fingerprint(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's int64 values (independent of the dtype it is kept in)."""
    data = tensor.detach().to("cpu", torch.int64).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()


def data_state(dm: NoisyData) -> dict[str, Any]:
    """Fingerprints of the labels and split of a set-up datamodule ({} before ``setup``)."""
    if dm.noisy_targets is None:
        return {}
    tensors = {k: getattr(dm, k) for k in FINGERPRINTED}
    prints = {k: fingerprint(t) for k, t in tensors.items() if t is not None}
    settings = {k: dm.hparams.get(k) for k in SETTINGS if k in dm.hparams}
    return {"fingerprints": prints, "settings": settings, "dataset": dm.dataset_name}


def check_data_state(dm: NoisyData, state: dict[str, Any]) -> None:
    """Raise ``ValueError`` when ``dm`` serves other labels or another split than the checkpoint's run."""
    if not state or dm.noisy_targets is None:
        return
    now = data_state(dm)
    if state.get("dataset") != now["dataset"]:
        raise ValueError(
            f"the checkpoint was trained on {state.get('dataset')}, this run loads {now['dataset']}; "
            "resume with the data settings of the original run"
        )
    differ = [k for k, v in state["fingerprints"].items() if now["fingerprints"].get(k) != v]
    if not differ:
        return
    then, cur = state.get("settings", {}), now["settings"]
    changed = {k: (then.get(k), cur.get(k)) for k in set(then) | set(cur) if then.get(k) != cur.get(k)}
    detail = ", ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, (a, b) in sorted(changed.items()))
    raise ValueError(
        f"refusing to resume: this run's {', '.join(differ)} differ from the checkpoint's "
        f"({detail or 'same settings; the data files differ'}). Noisy labels are never redrawn on resume: "
        "use the original data settings, or data.noisy_labels_path=<original run>/noisy_labels.npz"
    )


def check_run_folder_labels(dm: NoisyData, path: Path) -> None:
    """Refuse to overwrite a run folder's ``noisy_labels.npz`` with other labels.

    Called before ``setup`` writes the file, on every process: a run resumed
    (or restarted) in the same folder with other noise settings would
    otherwise replace the record of the labels its checkpoints were trained on.
    """
    if not path.is_file():
        return
    z = read_npz(path, "the run folder's", "the noisy_labels.npz this run writes")
    now_labels = {"noisy_targets": dm.noisy_targets, "clean_targets": dm.clean_targets}
    old = {k: z[k] for k in now_labels if k in z}
    meta = {k: z[k].item() for k in ("dataset", "noise_type", "noise_rate", "noise_seed") if k in z}
    same = len(old) == 2 and all(
        old[k].shape == tuple(now_labels[k].shape) and np.array_equal(old[k], now_labels[k].numpy()) for k in old
    )
    excluded = getattr(dm, "excluded", None)  # a pruned label file: the same samples must be left out
    now_left_out = np.zeros(len(dm.noisy_targets), dtype=bool) if excluded is None else excluded.numpy()
    same = same and np.array_equal(left_out(z), now_left_out)
    if not same:
        now = {"dataset": dm.dataset_name, **{k: dm.hparams.get(k) for k in ("noise_type", "noise_rate", "noise_seed")}}
        raise ValueError(
            f"{path} holds other noisy labels than this run draws ({meta} there, {now} now): this folder belongs "
            "to another run. Noisy labels are never redrawn on resume: resume with the original data settings "
            "(or data.noisy_labels_path pointing to that file), or log to another folder (trainer.logger version/name)"
        )
