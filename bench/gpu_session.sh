#!/usr/bin/env bash
# Every GPU measurement as one command, from the project root:
#
#   bash bench/gpu_session.sh [OUTDIR]          # OUTDIR defaults to $OUT (the device tool's)
#
# 1. environment: where `import flwr` fails and .gpu/whl holds the staged wheels
#    (bash ../shared/gpu/stage.sh, here; in a git worktree, where .git is a file, that
#    script stops at its .git/info/exclude line: /.gpu/ is in .gitignore, so run it without
#    that line), installs them into /tmp/site as that script's header says; writes
#    OUTDIR/env.txt (GPU, Python, torch, flwr).
# 2. bench: bench/gpu_vit_b.py (the device's matmul ceiling, then LoRA and full fine-tuning
#    at each batch: the app's timed loop, the bare loop, compiled) -> bench.txt, bench.json.
# 3. deploy: a real deployment (tools/deploy/deploy.sh: a SuperLink and 2 SuperNodes on this
#    host), fedavg then fedlora, ROUNDS rounds each, `device` = DEVICE, ViT-B/16 at 224 px,
#    random weights -> runs/<strategy>/ (the run folders, with the processes' logs),
#    run-<strategy>.log; then report/report.md (tools.report: the steady rounds' phase tables)
#    and projections.txt (each run's steady round projected on 10 and 100 Mbit/s links, as
#    a simulation and as a deployment would run it).
# Each part writes as it goes, so a part cut short by a timeout leaves what it finished.
# Last lines: the bench's `gpu: ...` line and a `deploy: ...` line per strategy.
#
# Settings (environment; the defaults are the GPU session's):
#   PARTS="bench deploy"   the parts to run (e.g. PARTS=deploy to rerun only that one)
#   DEVICE=cuda MODEL=vit_base_patch16_224 IMG=224 PATCH=0 ROUNDS=3
#   BATCHES=64,128,256 STEPS=10 REPEATS=2 MATMUL=8192   (bench)
#   BENCH_TIMEOUT=270 RUN_TIMEOUT=240   (seconds: the bench, whose compiled rows of a strategy
#   start only within 60 % of it; each `flwr run`)
#   PYTHON=python3 (the interpreter; here .venv/bin/python)  FEDVIT_CACHE=/tmp/fedvit-cache
# On a CPU, as tested there (a small model, the same steps):
#   PYTHON=.venv/bin/python DEVICE=cpu MODEL=test_vit IMG=16 PATCH=4 BATCHES=4,8 STEPS=3 \
#     REPEATS=1 MATMUL=512 ROUNDS=2 BENCH_TIMEOUT=900 bash bench/gpu_session.sh /tmp/gpu-session-cpu
set -u
out=$(mkdir -p "${1:-${OUT:?give OUTDIR or set OUT}}" && cd "${1:-$OUT}" && pwd)
cd "$(dirname "$0")/.."
root=$PWD
PARTS=${PARTS:-bench deploy}
DEVICE=${DEVICE:-cuda} MODEL=${MODEL:-vit_base_patch16_224} IMG=${IMG:-224} PATCH=${PATCH:-0}
ROUNDS=${ROUNDS:-3} BATCHES=${BATCHES:-64,128,256} STEPS=${STEPS:-10} REPEATS=${REPEATS:-2}
MATMUL=${MATMUL:-8192} BENCH_TIMEOUT=${BENCH_TIMEOUT:-270} RUN_TIMEOUT=${RUN_TIMEOUT:-240}
PY=${PYTHON:-python3}
export FEDVIT_CACHE=${FEDVIT_CACHE:-/tmp/fedvit-cache} FLWR_TELEMETRY_ENABLED=0 \
       FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH}
say() { echo "gpu_session: $*" | tee -a "$out/session.log"; }
elapsed() { echo $(( $(date +%s) - t0 ))s; }
t0=$(date +%s)

# 1. environment
if ! "$PY" -c "import flwr" 2>/dev/null; then
  if [[ ! -d /tmp/site/flwr ]]; then  # a rerun on the same machine installed them already
    ls .gpu/whl/*.whl >/dev/null 2>&1 || { say "no flwr and no staged wheels in .gpu/whl"; exit 2; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl \
      > "$out/pip.log" 2>&1 || { say "installing .gpu/whl failed (pip.log)"; exit 2; }
    say "installed $(ls .gpu/whl | wc -l) staged wheels into /tmp/site ($(elapsed))"
  fi
  export PYTHONPATH=$PYTHONPATH:/tmp/site PATH=/tmp/site/bin:$PATH FLWR_BIN=/tmp/site/bin
fi
flwr_cli=${FLWR_BIN:+$FLWR_BIN/}flwr
[[ -z "${FLWR_BIN:-}" && -x .venv/bin/flwr ]] && flwr_cli=.venv/bin/flwr
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  "$PY" -c "import sys, torch, flwr, timm, peft; print(sys.version.split()[0], 'torch',
torch.__version__, 'flwr', flwr.__version__, 'timm', timm.__version__, 'peft', peft.__version__,
'cuda', torch.cuda.is_available())"; nproc; } > "$out/env.txt" 2>&1
cat "$out/env.txt"

# 2. bench
if [[ " $PARTS " == *" bench "* ]]; then
  say "bench: $MODEL $IMG px, batches $BATCHES ($(elapsed))"
  # --num-classes 10: the digits' classes, so the deployment finds the cached model built
  timeout "$BENCH_TIMEOUT" "$PY" -u bench/gpu_vit_b.py --device "$DEVICE" --model "$MODEL" \
    --img-size "$IMG" --patch-size "$PATCH" --num-classes 10 --batches "$BATCHES" \
    --steps "$STEPS" --repeats "$REPEATS" --matmul "$MATMUL" --json "$out/bench.json" \
    --budget-s $(( BENCH_TIMEOUT * 6 / 10 )) \
    > "$out/bench.txt" 2>&1
  say "bench rc=$? ($(elapsed))"
  grep -v Warning "$out/bench.txt" | tail -25
fi

# 3. deploy
if [[ " $PARTS " == *" deploy "* ]]; then
  dep=/tmp/fvdeploy-$$
  extra="model-name='$MODEL' img-size=$IMG patch-size=$PATCH weights-path='' device='$DEVICE'"
  for s in fedavg fedlora; do
    rm -rf "$dep" "$out/runs/$s"
    say "deploy $s: $ROUNDS rounds, $extra ($(elapsed))"
    LINKS="10000:10000:0" tools/deploy/deploy.sh start --nodes 2 --dir "$dep" \
      > "$out/deploy-$s.log" 2>&1 || { say "deploy start failed"; tail -20 "$out/deploy-$s.log"; continue; }
    FLWR_HOME=$dep/flwr-home timeout "$RUN_TIMEOUT" "$flwr_cli" run . local-deployment --stream \
      --run-config "strategy='$s' num-server-rounds=$ROUNDS outputs-dir='$out/runs' run-name='$s' $extra" \
      > "$out/run-$s.log" 2>&1
    rc=$?
    tools/deploy/deploy.sh stop --dir "$dep" >> "$out/deploy-$s.log" 2>&1
    mkdir -p "$out/runs/$s" && cp "$dep"/logs/*.log "$out/runs/$s/" 2>/dev/null
    say "flwr run $s rc=$rc ($(elapsed))"
    grep -E "fedvit: (round|run)|Error|Traceback" "$out/run-$s.log" | cut -c1-240 | tail -8
  done
  rm -rf "$dep"
  runs=(); for s in fedavg fedlora; do [[ -f "$out/runs/$s/summary.json" ]] && runs+=("$out/runs/$s"); done
  if (( ${#runs[@]} )); then
    "$PY" -m tools.report "${runs[@]}" --out "$out/report" > "$out/report.log" 2>&1 \
      || say "tools.report failed (report.log)"
    "$PY" - "${runs[@]}" > "$out/projections.txt" 2>&1 <<'EOF'
import sys
from pathlib import Path

from tools.report.linkmodel import link_model
from tools.report.load import load_runs

for run in load_runs([Path(p) for p in sys.argv[1:]]):
    model = link_model(run)
    if model is None:
        print(f"{run.label}: no steady round to project")
        continue
    at = {m: (model.round_s(m), model.deployment_round_s(m)) for m in (10.0, 100.0)}
    print(f"deploy: {run.label} steady round projected " + ", ".join(
        f"{m:g} Mbit/s {sim:.2f} s (simulation) {dep:.2f} s (deployment)"
        for m, (sim, dep) in at.items()))
EOF
    sed -n '/^```/,/^```/p' "$out/report/report.md" 2>/dev/null | head -60
    cat "$out/projections.txt"
  fi
fi
say "done ($(elapsed))"
grep -h "^gpu: " "$out/bench.txt" 2>/dev/null
grep -h "^deploy: " "$out/projections.txt" 2>/dev/null
exit 0
