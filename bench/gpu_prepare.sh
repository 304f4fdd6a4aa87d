#!/usr/bin/env bash
# Prepare, on a machine with PyPI and ../shared/data, what bench/gpu_check.py needs on a GPU machine that has neither:
#   .whl/  wheels for Python 3.12 manylinux x86-64 of what its image lacks (bitsandbytes, trl, datasets and the few of their
#          dependencies it does not have; execnb and IPython to run the tutorial notebook), about 47 MB
#   .gpu/  the Qwen2.5 tokenizer and alpaca_en_demo.json, laid out as shared/data is (FT_NB_DATA=.gpu), about 5.5 MB
# Both are added to git's info/exclude (never committed) and must be carried to the GPU machine with the working tree.
# Then run there, from the repository root (one line; the executed notebook, the JSON report and the table land in $OUT):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site FT_NB_DATA=$PWD/.gpu PYTHONUNBUFFERED=1 || exit; python3 -m pip list 2>/dev/null | grep -iE '^(torch|transformers|peft|accelerate|pyarrow|fsspec|huggingface.hub|psutil) ' > $OUT/versions.txt; timeout 540 python3 bench/gpu_check.py --out $OUT 2>&1 | tee $OUT/gpu_check.log
# Usage: bash bench/gpu_prepare.sh [PYTHON]   (PYTHON: the interpreter whose pip downloads; default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
DATA=${FT_NB_SHARED_DATA:-../shared/data}
EXCLUDE=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$EXCLUDE")"; touch "$EXCLUDE"
for p in /.whl/ /.gpu/; do grep -qxF "$p" "$EXCLUDE" || echo "$p" >> "$EXCLUDE"; done

# Versions: the stack ft_nb is tested with here (TRAPS.md), and the IPython that execnb runs on.
WHEELS=(
  bitsandbytes==0.50.2 trl==1.16.0 datasets==5.2.0
  dill==0.4.1 multiprocess==0.70.19                                   # datasets' needs that the image lacks
  execnb==0.1.18 fastcore==1.12.47 ipython==9.18.1                    # the notebook runner (nbdev_test's)
  ipython-pygments-lexers==1.1.1 jedi==0.20.1 parso==0.8.7 matplotlib-inline==0.2.2 pexpect==4.9.0 ptyprocess==0.7.0
  prompt-toolkit==3.0.53 wcwidth==0.9.4 stack-data==0.6.3 asttokens==3.0.2 executing==2.3.0 pure-eval==0.2.4 traitlets==5.16.1
)
rm -rf .whl; mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"

rm -rf .gpu; mkdir -p .gpu/tokenizers .gpu/datasets
cp -r "$DATA/tokenizers/qwen2.5" .gpu/tokenizers/
cp "$DATA/datasets/alpaca_en_demo.json" .gpu/datasets/
chmod -R u+w .gpu

echo "wheels: $(ls .whl | wc -l) files, $(du -sh .whl | cut -f1); data: $(du -sh .gpu | cut -f1)"
echo "what travels (tracked + untracked-not-ignored + .whl + .gpu): $(( ( $( (git ls-files -z; git ls-files -z --others --exclude-standard) | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1) + $(du -sb .whl .gpu | awk '{s+=$1} END {print s}') ) / 1048576 )) MiB of 64"
