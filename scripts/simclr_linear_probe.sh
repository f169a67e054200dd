#!/usr/bin/env bash
# Linear probe at 80% symmetric noise (docs/results.md, issue 4): the CPU-scale fine-tuning config
# with the encoder frozen, from the SimCLR encoder and from a random one, on the same saved noisy
# labels as the full fine-tunes of scripts/simclr_cpu_demo.sh (run that first).
set -e
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
OUT=runs/simclr_cpu_demo
SIMCLR=$OUT/simclr/version_0/checkpoints/last.ckpt
LABELS=$(ls $OUT/ce_random/version_*/noisy_labels.npz | tail -1)
COMMON="--model.init_args.freeze_backbone true --data.init_args.noisy_labels_path $LABELS --trainer.logger.init_args.save_dir $OUT"
python train.py fit --config configs/simclr/cpu_finetune_ce.yaml $COMMON --model.init_args.init_from $SIMCLR \
  --trainer.logger.init_args.name probe_simclr > $OUT/probe_simclr.log 2>&1 &
python train.py fit --config configs/simclr/cpu_finetune_ce.yaml $COMMON \
  --trainer.logger.init_args.name probe_random > $OUT/probe_random.log 2>&1 &
wait
grep -h -E "^test" $OUT/probe_simclr.log $OUT/probe_random.log
