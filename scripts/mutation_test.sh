#!/usr/bin/env bash
# Mutation testing (mutmut 3, the `dev` extra) of the pure maths and the methods' training steps.
#
#   scripts/mutation_test.sh                 # every target below, one after the other
#   scripts/mutation_test.sh noise mwnet     # some of them
#   MUTANTS="datamodules.noise.x_apply_noise__mutmut_11 ..." scripts/mutation_test.sh noise  # re-check survivors
#
# Each target runs in its own copy of the work tree (tracked and untracked, not ignored,
# files) under $MUTATION_WORK (default /tmp/mutation/<target>), with a [tool.mutmut] section
# appended to the copy's pyproject.toml, so the repository itself is never mutated and
# targets can run side by side. mutmut runs, for each mutant, only the tests (of the
# target's test files) that execute the mutated function. Per target it writes
# $MUTATION_WORK/<target>/summary.json (counts) and survivors.txt (each surviving mutant's
# diff). Results and what each survivor means: docs/mutation.md.
#
# Slow on a shared CPU (several minutes per target): run it niced, e.g.
#   nice -n 15 env OMP_NUM_THREADS=1 scripts/mutation_test.sh noise
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${MUTATION_WORK:-/tmp/mutation}

# target -> "source file|test files and pytest options|functions to mutate (empty: the whole file)"
# Functions not listed are marked "# pragma: no mutate block" in the copy: mutmut then leaves them
# as they are (its trampolines would hide a LightningModule __init__'s arguments from
# save_hyperparameters, which reads them from the caller's frame).
declare -A TARGETS=(
  [noise]="datamodules/noise.py|tests/test_noise.py|"
  [losses]="lightning_modules/losses.py|tests/test_losses.py tests/test_given_labels.py|"
  [coteaching_selection]="lightning_modules/coteaching_selection.py|tests/test_coteaching.py tests/test_train_metrics.py -k 'not resume'|"
  [schedules]="lightning_modules/schedules.py|tests/test_schedules.py|"
  [mwnet]="lightning_modules/meta_weight_net.py|tests/test_meta_weight_net.py tests/test_given_labels.py tests/test_train_metrics.py|weighted_loss meta_loss_fn virtual_meta_loss WeightingNet.forward MetaWeightNet.training_step MetaWeightNet.per_sample_loss"
  [classifier]="lightning_modules/classifier.py|tests/test_given_labels.py tests/test_train_metrics.py tests/test_losses.py|Classifier.training_step Classifier.loss Classifier.forward"
  [coteaching]="lightning_modules/coteaching.py|tests/test_coteaching.py tests/test_given_labels.py tests/test_train_metrics.py tests/test_metric_names.py -k 'not resume and not hparams'|CoTeaching.compute_updates CoTeaching.training_step CoTeaching.current_forget_rate CoTeaching.on_train_epoch_start CoTeaching._log_train"
)
ORDER=(noise losses coteaching_selection schedules mwnet classifier coteaching)

toml_list() {  # words -> a TOML list of strings
  local out="" w
  for w in "$@"; do out+="\"${w//\"/\\\"}\", "; done
  echo "[${out%, }]"
}

run_target() {
  local name=$1 spec=${TARGETS[$1]:-}
  [[ -n $spec ]] || { echo "unknown target $1; allowed: ${ORDER[*]}" >&2; exit 2; }
  IFS='|' read -r source tests globs <<<"$spec"
  local dir="$WORK/$name"
  rm -rf "$dir" && mkdir -p "$dir"
  (cd "$REPO" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$dir")
  eval "local test_args=($tests)"  # keeps the quoted -k expression one argument
  local module=${source%.py}
  module=${module//\//.}
  cat >>"$dir/pyproject.toml" <<EOF

[tool.mutmut]
source_paths = ["$source"]
pytest_add_cli_args_test_selection = $(toml_list "${test_args[@]}")
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q"]
also_copy = ["datamodules", "lightning_modules", "callbacks", "tests", "train.py", "configs", "scripts"]
EOF
  if [[ -n $globs ]]; then  # leave every other function of the file alone
    python3 - "$dir/$source" $globs <<'PY'
import ast, sys
path, keep = sys.argv[1], set(sys.argv[2:])
lines = open(path).read().split("\n")
tree = ast.parse("\n".join(lines))
functions = [(f.name, f) for f in tree.body if isinstance(f, ast.FunctionDef)]
for c in (c for c in tree.body if isinstance(c, ast.ClassDef)):
    functions += [(f"{c.name}.{f.name}", f) for f in c.body if isinstance(f, ast.FunctionDef)]
for name, f in functions:
    if name in keep:
        continue
    header = f.body[0].lineno - 2  # the line holding the def's colon (0-based)
    while not lines[header].rstrip().endswith(":"):
        header -= 1
    lines[header] = lines[header].rstrip() + "  # pragma: no mutate block"
open(path, "w").write("\n".join(lines))
PY
  fi
  local patterns=()
  if [[ -n ${MUTANTS:-} ]]; then read -r -a patterns <<<"$MUTANTS"; fi  # re-check only these (full names)
  echo "== $name: mutating $source: ${globs:-the whole file} ${patterns[*]} with ${test_args[*]}"
  local start=$SECONDS
  (cd "$dir" && mutmut run "${patterns[@]}" >run.log 2>&1) || true  # the counts below tell what happened
  # the status of every mutant of the selected functions ("name: status" lines), and their counts
  (cd "$dir" && mutmut results --all true 2>&1 | python3 -c '
import fnmatch, json, sys
patterns = sys.argv[1:]
rows = [line.strip().rsplit(": ", 1) for line in sys.stdin if ": " in line]
rows = [(n, s) for n, s in rows if not patterns or any(fnmatch.fnmatch(n, p) for p in patterns)]
open("results.txt", "w").write("".join(f"{n}: {s}\n" for n, s in rows))
counts = {}
for _, s in rows:
    counts[s] = counts.get(s, 0) + 1
json.dump(counts | {"total": len(rows)}, open("summary.json", "w"))
' "${patterns[@]}")
  : >"$dir/survivors.txt"
  for m in $(awk -F': ' '$2 != "killed" {print $1}' "$dir/results.txt"); do
    (cd "$dir" && echo "## $m ($(grep -F "$m:" results.txt | cut -d' ' -f2-))" && mutmut show "$m" | grep -E '^[-+]([^-+]|$)' && echo) >>"$dir/survivors.txt"
  done
  echo "   $((SECONDS - start)) s: $(cat "$dir/summary.json")"
  echo "   survivors: $dir/survivors.txt"
}

command -v mutmut >/dev/null || { echo "mutmut not found: pip install -e '.[dev]'" >&2; exit 2; }
for t in "${@:-${ORDER[@]}}"; do
  run_target "$t"
done
