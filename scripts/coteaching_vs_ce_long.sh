#!/usr/bin/env bash
# Co-teaching vs CE, the longer CPU-scale run of docs/results.md: 3,000 training images,
# 30 epochs, symmetric 50% noise, the same saved noisy labels; co-teaching schedule lengths scaled
# from the reference before the run (num_gradual 5 = 1/6 of the budget, decay from epoch 12 = 0.4).
# Summary: python scripts/coteaching_vs_ce.py --summarise-only --out runs/cot_long
set -e
cd "$(dirname "$0")/.."
mkdir -p runs/cot_long
export OMP_NUM_THREADS=1
COMMON="--trainer.max_epochs 30 --data.init_args.train_subset 3000 --trainer.logger.init_args.save_dir runs/cot_long"
t0=$(date +%s)
python train.py fit --config configs/coteaching/cpu_sym50_ce.yaml $COMMON > runs/cot_long/ce.log 2>&1 &
CE=$!
while [ ! -f runs/cot_long/cpu_sym50_ce/version_0/noisy_labels.npz ]; do sleep 5; done
python train.py fit --config configs/coteaching/cpu_sym50.yaml $COMMON --model.init_args.num_gradual 5 --model.init_args.epoch_decay_start 12 \
  --data.init_args.noisy_labels_path runs/cot_long/cpu_sym50_ce/version_0/noisy_labels.npz > runs/cot_long/cot.log 2>&1 &
COT=$!
wait $CE; echo "ce done $(( $(date +%s) - t0 )) s"
wait $COT; echo "cot done $(( $(date +%s) - t0 )) s"
