#!/usr/bin/env bash
# CPU-scale SimCLR demo (issue 4), on the real CIFAR-10 copy in ./data:
#   1. SimCLR pretraining of ConvNet6 on 5,000 training images (kNN before / after),
#   2. CE at 80% symmetric noise from random init,
#   3. CE at the same noise (the run-2 noisy_labels.npz) from the SimCLR encoder,
# then prints the table of docs/results.md. Usage (repo root):
#   OMP_NUM_THREADS=1 nice -n 5 bash scripts/simclr_cpu_demo.sh [OUT_DIR] > demo.log 2>&1
set -euo pipefail
OUT=${1:-runs/simclr_cpu_demo}
export PYTHONWARNINGS=ignore
mkdir -p "$OUT"
timed() {  # timed NAME CMD...: run CMD, record its wall time in $OUT/NAME.seconds
  local name=$1; shift
  local t0; t0=$(date +%s)
  "$@"
  echo $(( $(date +%s) - t0 )) > "$OUT/$name.seconds"
}
log() { echo "--trainer.logger.init_args.save_dir=$OUT --trainer.logger.init_args.name=$1 --trainer.logger.init_args.version=0"; }

timed simclr python train.py fit --config configs/simclr/cpu_cifar10.yaml $(log simclr)
CKPT=$OUT/simclr/version_0/checkpoints/last.ckpt
python -m lightning_modules.pretrained export "$CKPT" "$OUT/simclr_encoder.pt"

timed ce_random python train.py fit --config configs/simclr/cpu_finetune_ce.yaml $(log ce_random)
NOISE=$OUT/ce_random/version_0/noisy_labels.npz
timed ce_simclr python train.py fit --config configs/simclr/cpu_finetune_ce.yaml $(log ce_simclr) \
  --model.init_args.init_from "$CKPT" --data.init_args.noisy_labels_path "$NOISE"

python - "$OUT" <<'PY'
import json, platform, sys
from pathlib import Path
out = Path(sys.argv[1])
knn = json.loads((out / "simclr/version_0/knn.json").read_text())
sec = {n: int((out / f"{n}.seconds").read_text()) for n in ("simclr", "ce_random", "ce_simclr")}
print(f"machine: {platform.processor() or platform.machine()}, {platform.node()}")
print("| run | kNN acc before | kNN acc after | test acc (last) | test acc (best val) | wall time |")
print("|---|---|---|---|---|---|")
print(f"| SimCLR pretraining | {knn[0]['knn_acc']:.4f} | {knn[-1]['knn_acc']:.4f} | - | - | {sec['simclr']} s |")
for name, label in (("ce_random", "CE, random init"), ("ce_simclr", "CE, SimCLR init")):
    r = json.loads((out / f"{name}/version_0/test_results.json").read_text())
    print(f"| {label} | - | - | {r['test']['test/acc']:.4f} | {r['test_best']['test_best/acc']:.4f} | {sec[name]} s |")
PY
