#!/usr/bin/env bash
# CPU-scale SimCLR demo (docs/results.md), on the real CIFAR-10 copy in ./data:
#   1. SimCLR pretraining of ConvNet6 on 5,000 training images, no labels (kNN before / during / after),
#   2. for each seed: CE at 80% symmetric noise from random init and from the SimCLR encoder, the two
#      runs side by side (one thread each), the same fine-tuning config, the same noisy labels,
#   3. the same with the encoder frozen (linear probe), seed 0,
# then prints the table of docs/results.md. Usage (repo root; about 75 + 20 min on the 2-core VM):
#   nice -n 5 bash scripts/simclr_cpu_demo.sh [OUT_DIR] [SEEDS...] > demo.log 2>&1
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/simclr_cpu_demo}
shift || true
SEEDS=${*:-0 1 2}
export PYTHONWARNINGS=ignore OMP_NUM_THREADS=1
mkdir -p "$OUT"
timed() {  # timed NAME CMD...: run CMD, record its wall time in $OUT/NAME.seconds
  local name=$1; shift
  local t0; t0=$(date +%s)
  "$@" > "$OUT/$name.log" 2>&1
  echo $(( $(date +%s) - t0 )) > "$OUT/$name.seconds"
}
log() { echo "--trainer.logger.init_args.save_dir=$OUT --trainer.logger.init_args.name=$1 --trainer.logger.init_args.version=0"; }
FT=configs/simclr/cpu_finetune_ce.yaml
CKPT=$OUT/simclr/version_0/checkpoints/last.ckpt

[ -f "$CKPT" ] || timed simclr python train.py fit --config configs/simclr/cpu_cifar10.yaml $(log simclr)
python -m lightning_modules.pretrained export "$CKPT" "$OUT/simclr_encoder.pt"

for seed in $SEEDS; do
  timed "ce_random_s$seed" python train.py fit --config $FT --seed_everything "$seed" $(log "ce_random_s$seed") &
  timed "ce_simclr_s$seed" python train.py fit --config $FT --seed_everything "$seed" $(log "ce_simclr_s$seed") \
    --model.init_args.init_from "$CKPT" &
  wait
done
timed probe_random python train.py fit --config $FT $(log probe_random) --model.init_args.freeze_backbone true &
timed probe_simclr python train.py fit --config $FT $(log probe_simclr) --model.init_args.freeze_backbone true \
  --model.init_args.init_from "$CKPT" &
wait

python - "$OUT" $SEEDS <<'PY'
import json, platform, statistics, sys
from pathlib import Path
import numpy as np
out, seeds = Path(sys.argv[1]), sys.argv[2:]
runs = [f"{kind}_s{s}" for s in seeds for kind in ("ce_random", "ce_simclr")] + ["probe_random", "probe_simclr"]
labels = {r: np.load(out / r / "version_0/noisy_labels.npz")["noisy_targets"] for r in runs}
assert all((v == labels[runs[0]]).all() for v in labels.values()), "the runs did not train on the same noisy labels"
knn = json.loads((out / "simclr/version_0/knn.json").read_text())
print(f"machine: {platform.processor() or platform.machine()}, {platform.node()}")
print("SimCLR kNN accuracy: " + ", ".join(f"epoch {k['epoch']}: {k['knn_acc']:.4f}" for k in knn))
print("| run | seed | test acc (last) | macro-F1 (last) | test acc (best noisy val) | wall time |")
print("|---|---|---|---|---|---|")
res = {}
for r in runs:
    j = json.loads((out / r / "version_0/test_results.json").read_text())
    res[r] = (j["test"]["test/acc"], j["test"]["test/f1"], j["test_best"]["test_best/acc"])
    sec = int((out / f"{r}.seconds").read_text())
    name, _, seed = r.rpartition("_s") if r.startswith("ce_") else (r, "", "0")
    print(f"| {name} | {seed} | {res[r][0]:.4f} | {res[r][1]:.4f} | {res[r][2]:.4f} | {sec} s |")
for kind in ("ce_random", "ce_simclr"):
    vals = [res[f"{kind}_s{s}"] for s in seeds]
    mean = [statistics.mean(v[i] for v in vals) for i in range(3)]
    print(f"| {kind}, mean of {len(seeds)} | - | {mean[0]:.4f} | {mean[1]:.4f} | {mean[2]:.4f} | - |")
PY
