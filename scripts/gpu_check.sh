#!/usr/bin/env bash
# One short prepared check for a machine with NVIDIA GPUs (docs/scaling.md). Run from the repository root with
# lmtailor installed (`make install`, plus `pip install bitsandbytes vllm deepspeed` where they are wanted):
#
#     bash scripts/gpu_check.sh [OUT_DIR]
#
# What it runs, each step said as PASS / FAIL / SKIP (with the reason) into OUT_DIR/gpu_check.md, whose
# lines go into docs/benchmarks.md:
#   1. QLoRA steps on the embedded SmolLM2-135M (4-bit base, bitsandbytes): time and peak GPU memory against
#      the --dry-run estimate
#   2. with two or more GPUs: the same data on 2 processes with DDP and with FSDP, losses against 1 process
#   3. vLLM serving (scripts/gpu_serve_check.py), tensor parallel over 2 GPUs where there are two
#   4. the test suite's cases that skip without a GPU (marked `gpu`: pytest -m gpu)
set -u
OUT=${1:-${OUT:-gpu-check-out}}
mkdir -p "$OUT"
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
REPORT="$OUT/gpu_check.md"
export LMTAILOR_HOME="$OUT/home"
say() { echo "$*" | tee -a "$REPORT"; }
: > "$REPORT"
say "# scripts/gpu_check.sh, $(date -u +%Y-%m-%dT%H:%MZ)"
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
say "- machine: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | sort | uniq -c | xargs), $GPUS GPU(s) visible to torch"
if [ "$GPUS" = 0 ]; then say "- SKIP everything: no CUDA GPU"; exit 0; fi

DATA=$("$PY" -c "from lmtailor.quickstart.run import sample_files; print(sample_files()[0])")

# 1. QLoRA
if "$PY" -c "import bitsandbytes" 2>/dev/null; then
  "$PY" -m lmtailor.cli train --model smollm2-135m-instruct --data "$DATA" --strategy qlora --epochs 1 \
      --dry-run > "$OUT/qlora_dry_run.txt" 2>&1
  "$PY" - "$DATA" "$OUT" <<'PYEOF' 2>&1 | tee -a "$OUT/qlora.log" | grep -E "^(PASS|FAIL)" | tee -a "$REPORT"
import sys, time, torch
from lmtailor.specs import TrainSpec
from lmtailor.train.sft import run_sft
data, out = sys.argv[1], sys.argv[2]
t0 = time.time()
try:
    folder = run_sft(TrainSpec(model="smollm2-135m-instruct", data=data, strategy="qlora", epochs=1,
                               output=f"{out}/qlora"), progress=False)
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"PASS qlora: 1 epoch in {time.time() - t0:.0f} s, peak {peak:.2f} GiB allocated, saved {folder}")
except Exception as e:
    print(f"FAIL qlora: {type(e).__name__}: {e}")
PYEOF
  say "- qlora dry-run estimate: $(grep -E 'total' "$OUT/qlora_dry_run.txt" | head -1 | tr -s ' │' ' ')"
else
  say "- SKIP qlora: bitsandbytes is not installed (pip install bitsandbytes)"
fi

# 2. DDP and FSDP on two GPUs against one process
if [ "$GPUS" -ge 2 ]; then
  printf 'neftune_alpha: 0\n' > "$OUT/no_neftune.yaml"
  for run in "one:--devices 1" "ddp:--devices 2 --distributed ddp" "fsdp:--devices 2 --distributed fsdp"; do
    name=${run%%:*}; flags=${run#*:}
    # shellcheck disable=SC2086
    if "$PY" -m lmtailor.cli train "$OUT/no_neftune.yaml" --model smollm2-135m-instruct --data "$DATA" \
        --strategy full --epochs 1 --batch-size 8 --no-packing --precision fp32 --output "$OUT/$name" \
        $flags > "$OUT/$name.log" 2>&1; then
      say "- PASS $name: losses $("$PY" -c "import json,sys; print([round(json.loads(l)['loss'],4) for l in open('$OUT/$name/metrics.jsonl') if 'loss' in json.loads(l)][:6])")"
    else
      say "- FAIL $name: $(tail -1 "$OUT/$name.log")"
    fi
  done
else
  say "- SKIP ddp / fsdp: one GPU"
fi

# 3. vLLM
if "$PY" -c "import vllm" 2>/dev/null; then
  "$PY" scripts/gpu_serve_check.py > "$OUT/vllm.log" 2>&1 && say "- PASS vllm: $(tail -1 "$OUT/vllm.log")" \
      || say "- FAIL vllm: $(tail -1 "$OUT/vllm.log")"
  if [ "$GPUS" -ge 2 ]; then
    "$PY" scripts/gpu_serve_check.py --tensor-parallel-size 2 > "$OUT/vllm_tp2.log" 2>&1 \
        && say "- PASS vllm tp=2: $(tail -1 "$OUT/vllm_tp2.log")" || say "- FAIL vllm tp=2: $(tail -1 "$OUT/vllm_tp2.log")"
  fi
else
  say "- SKIP vllm: not installed (pip install vllm)"
fi
# 4. the suite's GPU cases (each skips without the GPUs it needs; on a CPU machine they are all skipped)
"$PY" -m pytest -q -m gpu -rA tests > "$OUT/pytest_gpu.log" 2>&1
say "- pytest -m gpu: $(tail -1 "$OUT/pytest_gpu.log")"
grep -E "^(PASSED|FAILED|SKIPPED|ERROR)" "$OUT/pytest_gpu.log" | sed 's/^/  - /' | tee -a "$REPORT"
echo "report: $REPORT"
