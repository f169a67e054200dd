"""Inspection callbacks: a tiny fit through the CLI with configs/inspect.yaml, read back.

One module-scoped run (fake CIFAR-10, co-teaching CNN at width 0.125, 2
epochs, 40% symmetric noise) feeds most tests; they check the TensorBoard
event files, the CSVs and the callbacks' stored values against independent
computations (scikit-learn, a separate forward pass).
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

REPO = Path(__file__).resolve().parents[1]

from callbacks import (  # noqa: E402
    ConfidentMistakes,
    ConfusionMatrix,
    FilterVisualisation,
    HParamsMetrics,
    LabelNoiseDiagnostics,
)
from callbacks.confusion import confusion_figure  # noqa: E402
from callbacks.filters import filter_grid, stage_outputs  # noqa: E402
from callbacks.hparams import flatten_hparams  # noqa: E402
from callbacks.mistakes import top_mistakes  # noqa: E402
from callbacks.noise_diagnostics import loss_auroc, memorisation, suspected_mislabelled  # noqa: E402
from callbacks.inspection_helpers import scale_each  # noqa: E402

N_TRAIN, N_VAL, N_TEST, BATCH = 500, 100, 200, 64
TRAIN_SEEN = (N_TRAIN - N_VAL) // BATCH * BATCH  # drop_last: 384 samples per epoch
K_MISTAKES = 8


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def run(fake_cifar10_dir, tmp_path_factory):
    """Fit 2 epochs via train.main with tests/configs/tiny.yaml + inspect.yaml (intervals set to 1), then test twice."""
    import train

    tmp = tmp_path_factory.mktemp("inspect")
    cfg = yaml.safe_load((REPO / "configs" / "inspect.yaml").read_text())
    for cb in cfg["trainer"]["callbacks"]:  # same file, shorter intervals so 2 epochs show everything
        if cb["class_path"] in ("callbacks.ConfusionMatrix", "callbacks.FilterVisualisation"):
            cb["init_args"]["every_n_epochs"] = 1
        if cb["class_path"] == "callbacks.ConfidentMistakes":
            cb["init_args"]["k"] = K_MISTAKES
    (tmp / "inspect.yaml").write_text(yaml.safe_dump(cfg))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when pytest's own arguments are present
    try:
        cli = train.main([
            "fit", "--config", str(REPO / "tests" / "configs" / "tiny.yaml"), "--config", str(tmp / "inspect.yaml"),
            "--data.init_args.data_dir", str(fake_cifar10_dir), "--data.init_args.download", "false",
            "--data.init_args.train_subset", "null", "--data.init_args.val_size", str(N_VAL),
            "--data.init_args.batch_size", str(BATCH), "--data.init_args.noise_rate", "0.4",
            "--model.init_args.backbone.init_args.width", "0.125",
            "--model.init_args.optimizer.init_args.lr", "0.01",
            "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.logger.init_args.save_dir", str(tmp),
        ])
    finally:
        sys.argv = argv
        torch.set_num_threads(threads)  # the tests after this module keep their thread count
    trainer = cli.trainer
    by_type = {type(cb): cb for cb in trainer.callbacks}
    log_dir = Path(trainer.log_dir)
    ea = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0, "histograms": 0})
    ea.Reload()
    return SimpleNamespace(cli=cli, trainer=trainer, model=cli.model, dm=cli.datamodule, cb=by_type,
                           log_dir=log_dir, ea=ea)


def _test_logits(model, dm) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent forward pass over the test set (the model as it was at the last test: best checkpoint)."""
    model.eval()
    logits, targets = [], []
    with torch.no_grad():
        for batch in dm.test_dataloader():
            x = dm.eval_transform(batch["image"])
            logits.append(model(x))
            targets.append(batch["target"])
    return torch.cat(logits), torch.cat(targets)


# ------------------------------------------------------------- confusion
def test_confusion_matrix_counts_match_an_independent_pass(run):
    cm = run.cb[ConfusionMatrix]
    assert int(cm.matrices["val"].sum()) == N_VAL
    logits, y = _test_logits(run.model, run.dm)  # the last test ran with the best-val checkpoint
    expected = confusion_matrix(y.numpy(), logits.argmax(1).numpy(), labels=range(10))
    np.testing.assert_array_equal(cm.matrices["test_best"].numpy(), expected)
    assert expected.sum() == N_TEST
    saved = np.loadtxt(run.log_dir / "confusion_test_best.csv", delimiter=",", skiprows=1)
    np.testing.assert_array_equal(saved, expected)


def test_per_class_csv_matches_sklearn(run):
    logits, y = _test_logits(run.model, run.dm)
    p, r, f, s = precision_recall_fscore_support(y.numpy(), logits.argmax(1).numpy(), labels=range(10),
                                                 zero_division=0)
    rows = _read_csv(run.log_dir / "per_class_test_best.csv")
    assert [row["class"] for row in rows] == run.dm.class_names
    np.testing.assert_allclose([float(row["precision"]) for row in rows], p, atol=1e-6)
    np.testing.assert_allclose([float(row["recall"]) for row in rows], r, atol=1e-6)
    np.testing.assert_allclose([float(row["f1"]) for row in rows], f, atol=1e-6)
    assert [int(row["support"]) for row in rows] == s.tolist()


def test_confusion_images_and_text_in_tensorboard(run):
    tags = run.ea.Tags()
    assert len(run.ea.Images("val/confusion_matrix")) == 2  # every epoch, sanity check excluded
    for prefix in ("test", "test_best"):
        (img,) = run.ea.Images(f"{prefix}/confusion_matrix")
        assert (img.width, img.height) == (870, 750)  # figsize (7.7, 6.5) at 100 dpi for 10 classes
        assert f"{prefix}/per_class/text_summary" in tags["tensors"]
        assert (run.log_dir / f"confusion_{prefix}.png").is_file()


def test_confusion_titles_name_the_tested_checkpoint_not_the_fit_epoch(run):
    """After the fit the epoch counter reads 2 whichever checkpoint is tested; the titles name the file."""
    import json

    results = json.loads((run.log_dir / "test_results.json").read_text())
    titles = run.cb[ConfusionMatrix].titles
    for prefix in ("test", "test_best"):
        assert titles[prefix] == f"{prefix} confusion, {Path(results[prefix]['checkpoint']).name}"
    assert Path(results["test"]["checkpoint"]).name == "last.ckpt"
    assert titles["val"] == "val confusion, epoch 1"  # the second (last) epoch, counted from 0


def test_confusion_title_names_the_epoch_in_a_resumed_fit_and_the_file_in_validate(fake_cifar10_dir, tmp_path):
    from pytorch_lightning.loggers import TensorBoardLogger

    from datamodules import NoisyCIFAR10
    from lightning_modules import Classifier
    from lightning_modules.backbones import CNN

    def run(stage: str, ckpt_path: str | None, epochs: int = 1) -> ConfusionMatrix:
        """``trainer.fit`` or ``trainer.validate`` of a fresh model from ``ckpt_path``; the callback."""
        cb = ConfusionMatrix(every_n_epochs=1, on_test=False)
        dm = NoisyCIFAR10(data_dir=str(fake_cifar10_dir), val_size=100, batch_size=100, download=False)
        trainer = pl.Trainer(max_epochs=epochs, logger=TensorBoardLogger(tmp_path), callbacks=[cb],
                             enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
        getattr(trainer, stage)(Classifier(CNN(width=0.125)), datamodule=dm, ckpt_path=ckpt_path)
        return cb

    run("fit", None)
    (ckpt,) = tmp_path.rglob("*.ckpt")
    assert run("fit", str(ckpt), epochs=2).titles["val"] == "val confusion, epoch 1"
    # validating that checkpoint alone: the epoch counter reads 0, the title names the file
    assert run("validate", str(ckpt)).titles["val"] == f"val confusion, {ckpt.name}"


def test_row_normalised_figure_rows_sum_to_one():
    m = np.array([[3, 1], [0, 0]])
    fig = confusion_figure(m, ["a", "b"], normalize="row")
    data = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(np.asarray(data), [[0.75, 0.25], [0.0, 0.0]])
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == ["0.00", "0.00", "0.25", "0.75"]


# --------------------------------------------------------------- filters
def test_filter_grid_has_one_tile_per_kernel_rgb():
    conv = torch.nn.Conv2d(3, 5, 3)
    grid = filter_grid(conv, upscale=4, padding=2)
    ncols, nrows, tile = 3, 2, 3 * 4  # ceil(sqrt(5)) columns
    assert grid.shape == (3, nrows * (tile + 2) + 2, ncols * (tile + 2) + 2)
    # tile (row 1, col 1) is kernel 4, min-max scaled on its own and enlarged 4x
    k = scale_each(conv.weight.detach()[4:5])[0]
    y0, x0 = 2 + 1 * (tile + 2), 2 + 1 * (tile + 2)
    np.testing.assert_allclose(grid[:, y0:y0 + tile:4, x0:x0 + tile:4], k, atol=1e-6)
    # the 6th cell has no kernel: padding colour only
    y5, x5 = 2 + 1 * (tile + 2), 2 + 2 * (tile + 2)
    assert torch.all(grid[:, y5:y5 + tile, x5:x5 + tile] == 1)  # make_grid fills empty cells with pad_value


def test_filter_grid_grey_tiles_for_other_channel_counts():
    conv = torch.nn.Conv2d(2, 3, 5)
    grid = filter_grid(conv, upscale=1, padding=1)
    assert grid.shape == (3, 3 * (5 + 1) + 1, 2 * (5 + 1) + 1)  # one row per output kernel, one column per input
    assert torch.equal(grid[0], grid[1]) and torch.equal(grid[1], grid[2])  # grey


def test_filter_grid_in_tensorboard_has_one_tile_per_kernel(run):
    imgs = run.ea.Images("filters/first_conv")
    assert [i.step for i in imgs][0] == 0 and len(imgs) == 3  # start + after each of 2 epochs
    conv = run.model.backbone.features[0]
    n = conv.out_channels  # 16 at width 0.125
    ncols = math.ceil(math.sqrt(n))
    side = 3 * 8  # 3x3 kernels, upscale 8
    title = 20  # a band with the layer and the epoch above the kernels, widened to fit the text
    assert imgs[-1].height == title + math.ceil(n / ncols) * (side + 2) + 2
    assert imgs[-1].width >= ncols * (side + 2) + 2
    assert (run.log_dir / "filters_start.png").is_file() and (run.log_dir / "filters_epoch002.png").is_file()


def test_feature_maps_one_image_per_stage(run):
    stages = [t for t in run.ea.Tags()["images"] if t.startswith("feature_maps/")]
    # co-teaching CNN: 32x32, 16x16, 8x8, then unpadded convs 6x6, 4x4, 2x2 (the 1x1 pool is left out)
    assert sorted(stages) == sorted(f"feature_maps/stage{i}_{s}x{s}" for i, s in enumerate((32, 16, 8, 6, 4, 2)))


def test_stage_outputs_keeps_last_output_per_resolution():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Conv2d(2, 2, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1))
    x = torch.randn(1, 1, 8, 8)
    stages = stage_outputs(net, x)
    assert [tuple(s.shape) for s in stages] == [(1, 2, 8, 8), (1, 2, 4, 4)]
    torch.testing.assert_close(stages[0], torch.relu(net[0](x)))


# -------------------------------------------------------------- mistakes
def test_confident_mistakes_are_the_top_k_wrong_predictions(run):
    rows = _read_csv(run.log_dir / "mistakes_test_best.csv")
    logits, y = _test_logits(run.model, run.dm)
    conf, pred = logits.softmax(1).max(1)
    wrong = pred != y
    expected = conf[wrong].sort(descending=True).values[:K_MISTAKES]
    assert len(rows) == min(K_MISTAKES, int(wrong.sum()))
    np.testing.assert_allclose([float(r["confidence"]) for r in rows], expected.numpy(), atol=1e-5)
    names = run.dm.class_names
    for r in rows:
        i = int(r["index"])
        assert r["true"] == names[int(y[i])] and r["predicted"] == names[int(pred[i])] != r["true"]
    (img,) = run.ea.Images("test_best/confident_mistakes")
    assert (img.width, img.height) == (800, 2 * 230 + 40)  # 4 columns x 2 rows at 100 dpi


def test_top_mistakes_hand_example():
    conf = torch.tensor([0.9, 0.8, 0.95, 0.5, 0.99])
    pred = torch.tensor([1, 0, 2, 1, 0])
    target = torch.tensor([0, 0, 1, 2, 0])
    assert top_mistakes(conf, pred, target, 2).tolist() == [2, 0]
    assert top_mistakes(conf, pred, target, 10).tolist() == [2, 0, 3]


# ---------------------------------------------------- label-noise diagnostics
def test_loss_auroc_equals_sklearn(run):
    diag = run.cb[LabelNoiseDiagnostics]
    s = diag.seen.cpu()
    flipped = (diag.given != diag.clean).cpu()[s].numpy()
    expected = roc_auc_score(flipped, diag.loss.cpu()[s].numpy())
    assert int(s.sum()) == TRAIN_SEEN
    assert diag.history[-1]["loss_auroc"] == pytest.approx(expected, abs=1e-6)
    logged = [e.value for e in run.ea.Scalars("noise/loss_auroc")]
    assert len(logged) == 2 and logged[-1] == pytest.approx(expected, abs=1e-6)


def test_tracked_labels_are_the_datamodules(run):
    diag, dm = run.cb[LabelNoiseDiagnostics], run.dm
    tracked = (diag.pred >= 0).nonzero().squeeze(1).cpu()
    assert set(tracked.tolist()) <= set(dm.train_indices.tolist())
    assert torch.equal(diag.given.cpu()[tracked], dm.noisy_targets[tracked])
    assert torch.equal(diag.clean.cpu()[tracked], dm.clean_targets[tracked])


def test_memorisation_curve_logged_and_consistent(run):
    diag = run.cb[LabelNoiseDiagnostics]
    s = diag.seen.cpu()
    mem = memorisation(diag.pred.cpu()[s], diag.given.cpu()[s], diag.clean.cpu()[s])
    assert diag.history[-1]["memorised"] == pytest.approx(mem[0])
    assert diag.history[-1]["flipped_clean_acc"] == pytest.approx(mem[1])
    for tag in ("noise/memorised", "noise/flipped_clean_acc", "noise/loss_clean", "noise/loss_flipped"):
        assert len(run.ea.Scalars(tag)) == 2
    rows = _read_csv(run.log_dir / "noise_diagnostics.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert {"noise/loss_hist_clean", "noise/loss_hist_flipped"} <= set(run.ea.Tags()["histograms"])
    assert len(run.ea.Histograms("noise/loss_hist_flipped")) == 2


def test_suspected_mislabelled_csv(run):
    diag, dm = run.cb[LabelNoiseDiagnostics], run.dm
    rows = _read_csv(run.log_dir / "suspected_mislabelled.csv")
    tracked = (diag.pred >= 0).cpu()
    disagree = tracked & (diag.pred.cpu() != diag.given.cpu())
    assert len(rows) == int(disagree.sum()) > 0
    conf = [float(r["confidence"]) for r in rows]
    assert conf == sorted(conf, reverse=True)
    for r in rows:
        i = int(r["index"])
        assert int(r["given_label"]) == int(dm.noisy_targets[i]) != int(r["predicted_label"])
        assert int(r["clean_label"]) == int(dm.clean_targets[i])
        assert int(r["predicted_label"]) == int(diag.pred[i])


def test_loss_auroc_hand_examples():
    loss = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.8])
    flipped = torch.tensor([0, 0, 1, 1, 0])
    assert loss_auroc(loss, flipped) == pytest.approx(roc_auc_score(flipped.numpy(), loss.numpy()))
    assert loss_auroc(loss, torch.zeros(5)) is None and loss_auroc(loss, torch.ones(5)) is None
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=300).round(1), rng.integers(0, 2, 300)  # rounding makes ties
    assert loss_auroc(torch.tensor(x), torch.tensor(y)) == pytest.approx(roc_auc_score(y, x), abs=1e-6)


def test_memorisation_and_suspects_hand_examples():
    noisy = torch.tensor([0, 1, 2, 3, 4])
    clean = torch.tensor([0, 2, 2, 1, 1])  # samples 1, 3, 4 flipped
    pred = torch.tensor([0, 1, 2, 1, 0])  # 1 memorised, 3 clean, 4 neither
    assert memorisation(pred, noisy, clean) == pytest.approx((1 / 3, 1 / 3))
    assert memorisation(pred, clean, clean) is None
    order = suspected_mislabelled(torch.arange(5), noisy, pred, torch.tensor([0.9, 0.1, 0.5, 0.7, 0.8]))
    assert order.tolist() == [4, 3]


def test_diagnostics_off_with_a_warning_when_step_returns_only_the_loss():
    diag = LabelNoiseDiagnostics()
    module = SimpleNamespace()
    with pytest.warns(UserWarning, match="does not return 'per_sample_loss'"):
        diag.on_train_batch_end(None, module, torch.tensor(1.0), {"index": torch.arange(2)}, 0)
    assert diag._size == 0


# ---------------------------------------------------------------- hparams
def test_hparams_view_lists_the_metrics(run):
    content = run.ea.PluginTagToContent("hparams")
    exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in exp.metric_infos} >= {"val/acc", "test/acc", "test_best/acc", "noise/loss_auroc"}
    names = {h.name for h in exp.hparam_infos}
    assert {"loss", "noise_type", "noise_rate", "batch_size"} <= names
    assert "hp_metric" not in run.ea.Tags()["scalars"]  # default_hp_metric: false, no placeholder scalars
    assert len(run.ea.Scalars("val/acc")) == 2


def test_flatten_hparams():
    flat = flatten_hparams({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": torch.tensor(0.5), "f": "x"})
    assert flat == {"a/b": 1, "a/c": "[1, 2]", "d": "None", "e": 0.5, "f": "x"}


def test_learning_curve_names(run):
    scalars = set(run.ea.Tags()["scalars"])
    assert {"train/loss", "train/acc_noisy", "train/acc_clean", "val/loss", "val/acc", "val/f1",
            "test/acc", "test/f1", "test_best/acc", "test_best/f1"} <= scalars


# ----------------------------------------------------- other loggers, bad input
def test_files_written_without_tensorboard(fake_cifar10_dir, tmp_path):
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import CSVLogger

    from datamodules import NoisyCIFAR10
    from lightning_modules import Classifier
    from lightning_modules.backbones import CNN

    dm = NoisyCIFAR10(data_dir=str(fake_cifar10_dir), val_size=100, batch_size=100)
    model = Classifier(CNN(width=0.125))
    cb = ConfusionMatrix()
    trainer = pl.Trainer(logger=CSVLogger(tmp_path), callbacks=[cb], enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    with pytest.warns(UserWarning, match="no TensorBoardLogger"):
        trainer.test(model, datamodule=dm, verbose=False)
    rows = _read_csv(Path(trainer.log_dir) / "per_class_test.csv")
    assert sum(int(r["support"]) for r in rows) == N_TEST == int(cb.matrices["test"].sum())


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ConfusionMatrix(every_n_epochs=-1), "every_n_epochs must be >= 0"),
        (lambda: ConfusionMatrix(normalize="col"), "normalize must be 'none' or 'row'"),
        (lambda: FilterVisualisation(every_n_epochs=0), "every_n_epochs must be >= 1"),
        (lambda: FilterVisualisation(upscale=0), "upscale must be >= 1"),
        (lambda: FilterVisualisation(max_channels=0), "max_channels must be >= 1"),
        (lambda: ConfidentMistakes(k=0), "k must be >= 1"),
        (lambda: ConfidentMistakes(ncols=0), "ncols must be >= 1"),
        (lambda: LabelNoiseDiagnostics(every_n_epochs=0), "every_n_epochs must be >= 1"),
        (lambda: LabelNoiseDiagnostics(max_rows=0), "max_rows must be >= 1 or None"),
        (lambda: HParamsMetrics(metrics=[]), "metrics must be a non-empty list"),
        (lambda: confusion_figure(np.eye(2), ["a", "b"], normalize="all"), "normalize must be"),
        (lambda: filter_grid(torch.nn.Conv2d(3, 2, 3), upscale=0), "upscale must be >= 1"),
    ],
)
def test_bad_arguments_fail_early(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ----------------------------------------------------- logits handed to callbacks
class RecordEvalOutputs(pl.Callback):
    """Keeps what each validation / test step returned, with the batch it was given."""

    def __init__(self):
        self.seen: list[tuple[object, dict]] = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.seen.append((outputs, batch))

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.seen.append((outputs, batch))


def _eval_modules():
    from lightning_modules import Classifier, CoTeaching, MetaWeightNet
    from lightning_modules.backbones import CNN

    torch.manual_seed(0)
    net = lambda: CNN(n_outputs=10, width=0.125)  # noqa: E731
    return {
        "classifier": Classifier(net()),
        "coteaching_mean": CoTeaching(net(), forget_rate=0.2, eval_network="mean"),
        "coteaching_net2": CoTeaching(net(), forget_rate=0.2, eval_network=2),
        "meta_weight_net": MetaWeightNet(net()),
    }


@pytest.mark.parametrize("name", ["classifier", "coteaching_mean", "coteaching_net2", "meta_weight_net"])
def test_every_module_hands_its_evaluation_logits_to_callbacks(name, tmp_path):
    """Confusion matrices and mistake galleries read the logits the step returns
    (``callbacks.inspection_helpers.logits_from``); without them they pay a second forward pass."""
    module = _eval_modules()[name]
    g = torch.Generator().manual_seed(1)
    batches = [{"image": torch.randn(8, 3, 32, 32, generator=g), "target": torch.randint(0, 10, (8,), generator=g),
                "index": torch.arange(8 * i, 8 * i + 8)} for i in range(2)]
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    record = RecordEvalOutputs()
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[record], default_root_dir=tmp_path)
    trainer.validate(module, dataloaders=loader, verbose=False)
    trainer.test(module, dataloaders=loader, verbose=False)
    assert len(record.seen) == 4
    module.eval()
    for outputs, batch in record.seen:
        assert isinstance(outputs, dict) and "logits" in outputs, f"{name} returned {type(outputs).__name__}"
        with torch.no_grad():
            assert torch.allclose(outputs["logits"], module(batch["image"]), atol=1e-5)
