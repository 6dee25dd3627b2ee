#!/usr/bin/env bash
# GPU benchmark: encode, suggest and the full `score` on one GPU; prints baseline, tagsmith and
# the ratio for each (see benchmarks/gpu.py). Sized to finish in under 8 minutes on an H200;
# every part is cut off at its own limit so one slow part cannot eat the others' time.
#
#   bash benchmarks/gpu.sh              # on the GPU machine
#   bash benchmarks/gpu.sh --smoke      # anywhere: CPU, tiny model, a few hundred tags
#   PYTHON=.venv/bin/python bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

smoke=()
if [ "${1:-}" = "--smoke" ]; then smoke=(--smoke); shift; fi

echo "== $(date -u +%FT%TZ)  $(uptime)"
if [ ${#smoke[@]} -eq 0 ]; then
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm \
    --format=csv,noheader || true
fi
"$PY" -c "import tagsmith, torch; print('tagsmith', tagsmith.__version__, 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"

# part:seconds; limits add up to 450 s (7.5 min) plus model building in the first part.
status=0
for spec in encode:150 precision:60 suggest:90 score:150; do
  part="${spec%%:*}"
  limit="${spec##*:}"
  if ! timeout "$limit" "$PY" benchmarks/gpu.py "${smoke[@]}" --parts "$part" "$@"; then
    echo "!! part $part failed or ran past ${limit} s"
    status=1
  fi
done
exit "$status"
