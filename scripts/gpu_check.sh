#!/usr/bin/env bash
# The checks that need a GPU, as one script of at most ~8 minutes on one GPU; prints one Markdown table
# to paste into docs/benchmarks.md. Every step runs through the project's own entry points.
#
#   bash scripts/gpu_check.sh                      # on a GPU machine; DATA_DIR holds (or downloads) CIFAR-10
#   bash scripts/gpu_check.sh --device cpu --smoke # the same steps at smoke size on a CPU (what the tests run)
#                                                  (the two steps that run suite tests only collect them there)
#
# Steps: bench/bench_performance.py (fp32 / bf16 / fp16 / channels_last / resident / compile, per backbone);
# the fast recipe on the full data (configs/fast/cifar10.yaml: test accuracy, wall time); one epoch of the
# reference co-teaching config; one epoch of the ResNet-18 SimCLR config with its kNN monitor; co-teaching+
# with forget_rate auto under 16-mixed with inspect.yaml; MW-Net under torch.compile (a clear refusal expected:
# its virtual step needs a double backward) and under 16-mixed; a SIGKILL-and-resume on the device compared with
# an uninterrupted run by torch.equal on every weight (tests/test_resume.py); and, with two or more GPUs, the
# 2-process DDP matrix of the suite (every method with inspect.yaml, identical replicas, callbacks covering the
# whole evaluation set, kill-and-resume) on NCCL with TORCH_DISTRIBUTED_DEBUG=DETAIL. The last two run the
# suite's own tests on the device (NLL_TEST_ACCELERATOR), so the GPU machine needs the project's dependencies
# (`pip install -e ".[dev]"`). Measured on an H200: docs/benchmarks.md.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # every step imports this checkout, installed or not
DEVICE=gpu; SMOKE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    *) echo "gpu_check.sh: unknown argument $1 (allowed: --device gpu|cpu, --smoke)" >&2; exit 2 ;;
  esac
done
case "$DEVICE" in gpu|cpu) ;; *) echo "gpu_check.sh: --device must be gpu or cpu, got $DEVICE" >&2; exit 2 ;; esac
DATA_DIR=${DATA_DIR:-data}
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
export PYTHONWARNINGS=ignore
if [ "$SMOKE" = 1 ]; then
  BENCH=(--images 256 --batch-size 64 --nets airbench --variants fp32,bf16)
  SIZE=(--data.init_args.train_subset 256 --data.init_args.val_size 64 --trainer.max_epochs 1
        --data.init_args.batch_size 16                # the 9-layer CNN: ~36 s a co-teaching step at 128 (one loaded core)
        --trainer.limit_train_batches 2 --trainer.limit_val_batches 1 --trainer.limit_test_batches 1)
  FAST=(--data.init_args.batch_size 128 --model.init_args.backbone.init_args.width 0.125)
  HALF=bf16-mixed
  META=(--data.init_args.meta_size 2)
  RESUME=(-k sigkill_mid_epoch)                   # the classifier's kill-and-resume
  DDP_TESTS=(tests/test_ddp_inspect.py -k quick_with_inspect)
  SUITE_RUN=(--collect-only)                      # the suite runs these tests itself: here, check the selection
else
  BENCH=(--images 10000 --nets cnn,resnet18,airbench)
  SIZE=(--trainer.max_epochs 1)
  FAST=()
  HALF=16-mixed
  META=()
  RESUME=(-k sigkill)                             # the classifier's and co-teaching's kill-and-resume
  # the confident-mistakes test recomputes the run's predictions on the CPU to 1e-5, which cuDNN's TF32
  # convolutions do not meet; the replica, coverage and resume tests compare the device's own results
  DDP_TESTS=(tests/test_ddp_inspect.py tests/test_ddp_resume.py tests/test_distributed.py tests/test_dividemix.py
             -k "(ddp or distributed or two_process) and not confident_mistakes")
  SUITE_RUN=()
fi
[ "$DEVICE" = cpu ] && HALF=bf16-mixed  # 16-mixed is GPU-only in Lightning
COMMON=(--trainer.accelerator "$DEVICE" --trainer.devices 1 --trainer.enable_progress_bar false
        --data.init_args.data_dir "$DATA_DIR" --trainer.logger.init_args.save_dir "$OUT")
ROWS="$OUT/rows.md"; : > "$ROWS"

step() {  # step NAME COMMAND...: run, time, record exit code and the test accuracy it wrote (if any)
  local name="$1"; shift
  local log="$OUT/$name.log" start end rc acc
  start=$(date +%s%N)
  "$@" > "$log" 2>&1; rc=$?
  end=$(date +%s%N)
  acc=$(python - "$OUT/$name" <<'PY'
import json, sys, pathlib
files = sorted(pathlib.Path(sys.argv[1]).glob("version_*/test_results.json"))
r = json.loads(files[-1].read_text()).get("test", {}) if files else {}
print(f"{100 * r['test/acc']:.2f}" if "test/acc" in r else "")
PY
)
  printf '| %s | %s | %s | %s |\n' "$name" "$([ $rc = 0 ] && echo ok || echo "FAILED ($rc)")" \
    "$(awk "BEGIN {printf \"%.1f\", ($end - $start) / 1e9}")" "$acc" >> "$ROWS"
  [ $rc = 0 ] || tail -n 20 "$log" >&2
}

step bench python bench/bench_performance.py --device "$DEVICE" --data-dir "$DATA_DIR" "${BENCH[@]}"
step fast_cifar10 python train.py fit --config configs/fast/cifar10.yaml "${COMMON[@]}" \
  --trainer.logger.init_args.name fast_cifar10 "${FAST[@]}" \
  $([ "$SMOKE" = 1 ] && echo "--data.init_args.train_subset 256 --trainer.max_epochs 1")
step coteaching_reference python train.py fit --config configs/coteaching/cifar10.yaml \
  --config configs/coteaching/cifar10_sym50.yaml "${COMMON[@]}" "${SIZE[@]}" \
  --trainer.logger.init_args.name coteaching_reference --model.init_args.epoch_decay_start 1
step coteaching_plus_auto_half python train.py fit --config configs/coteaching/cifar10.yaml \
  --config configs/coteaching/cifar10_sym50.yaml --config configs/inspect.yaml "${COMMON[@]}" "${SIZE[@]}" \
  --trainer.logger.init_args.name coteaching_plus_auto_half --trainer.precision "$HALF" \
  --model.init_args.mode coteaching_plus --model.init_args.forget_rate auto \
  --model.init_args.auto_warmup_epochs 1 --model.init_args.epoch_decay_start 1
step simclr_resnet18 python train.py fit --config configs/simclr/cifar10_resnet18.yaml "${COMMON[@]}" "${SIZE[@]}" \
  --trainer.logger.init_args.name simclr_resnet18 --trainer.precision "$HALF"  # its kNN monitor runs after the last epoch
refused() {  # refused PATTERN COMMAND...: succeeds when the command fails early with a message matching PATTERN
  local pattern="$1"; shift
  ! "$@" > /tmp/gpu_check_refused.log 2>&1 && grep -q "$pattern" /tmp/gpu_check_refused.log
}
step mwnet_compile_refused refused "double backward" python train.py fit --config configs/mwnet/base.yaml \
  --config configs/mwnet/cifar10_asym40.yaml --config configs/cluster/performance.yaml "${COMMON[@]}" "${SIZE[@]}" "${META[@]}" \
  --trainer.logger.init_args.name mwnet_compile_refused
step mwnet_half python train.py fit --config configs/mwnet/base.yaml --config configs/mwnet/cifar10_asym40.yaml \
  "${COMMON[@]}" "${SIZE[@]}" "${META[@]}" --trainer.logger.init_args.name mwnet_half --trainer.precision "$HALF"
SUITE=(python -m pytest -q -p no:cacheprovider --basetemp "$OUT/pytest" "${SUITE_RUN[@]}")
step resume_exact env NLL_TEST_ACCELERATOR="$DEVICE" CUBLAS_WORKSPACE_CONFIG=:4096:8 "${SUITE[@]}" \
  tests/test_resume.py "${RESUME[@]}"
GPUS=$([ "$DEVICE" = gpu ] && python -c 'import torch; print(torch.cuda.device_count())' || echo 0)
if [ "$DEVICE" = cpu ] || [ "$GPUS" -ge 2 ]; then  # on the CPU: two gloo processes, at smoke size
  # DETAIL on gloo makes DistributedDataParallel's constructor segfault in torch 2.14.1 (reproduced with a
  # Linear layer and two spawned processes, in Logger.set_construction_data_and_log); INFO does not
  DEBUG_LEVEL=$([ "$DEVICE" = gpu ] && echo DETAIL || echo INFO)
  step ddp_matrix env NLL_TEST_ACCELERATOR="$DEVICE" TORCH_DISTRIBUTED_DEBUG=$DEBUG_LEVEL CUBLAS_WORKSPACE_CONFIG=:4096:8 \
    "${SUITE[@]}" "${DDP_TESTS[@]}"
else
  printf '| ddp_matrix | skipped: %s GPU | | |\n' "$GPUS" >> "$ROWS"
fi

echo
echo "GPU check on $( [ "$DEVICE" = gpu ] && python -c 'import torch; print(torch.cuda.get_device_name(0))' || echo CPU ), $(date -u +%F)"
echo
echo "| step | result | wall time (s) | test acc, last epoch (%) |"
echo "| --- | --- | --- | --- |"
cat "$ROWS"
echo
echo "bench_performance.py:"
grep -E "s/epoch" "$OUT/bench.log" || true
! grep -q FAILED "$ROWS"
