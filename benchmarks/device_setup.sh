#!/usr/bin/env bash
# Prepare, on the development machine, what the GPU machine lacks, for Python 3.12
# x86-64 (PYVER overrides). It has torch, transformers, peft, safetensors, accelerate,
# pandas, pyarrow, scipy, scikit-learn, sacrebleu and matplotlib, but not mergekit,
# pydantic or lm-evaluation-harness. Everything lands in .whl/ (git-ignored); carry it:
#
#   bash benchmarks/device_setup.sh [--bench]
#   device run, carry [".whl"], command:
#     python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
#     PYTHONPATH=/tmp/site MKR_SITES=/tmp/site python3 benchmarks/gpu_check.py --layers 28 &&
#     PYTHONPATH=/tmp/site MKR_SITES=/tmp/site python3 benchmarks/merge_speed.py --layers 4 --cuda
#
# --bench adds lm-evaluation-harness and the wheels it needs, and copies the GSM8K
# data to .whl/data (../shared/data does not travel), for
#     PYTHONPATH=/tmp/site python3 benchmarks/bench_harness_throughput.py --data-dir .whl/data \
#       --task gsm8k_cot --limit 256 --batch-size 64 --repeats 3 --results $OUT/harness.md
#
# The scripts start each command through site.addsitedir(MKR_SITES) (benchmarks/_launch.py),
# which runs mergekit_reasoning.pth, so the stock mergekit-yaml finds the method there too.
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER="${PYVER:-3.12}"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
python3 -m pip wheel --quiet --no-deps -w .whl .

binary() {  # wheels for the GPU machine's interpreter and platform, no dependencies
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$@"
}
binary mergekit==0.1.5 immutables pydantic pydantic-core annotated-types typing-inspection

if [[ "${1:-}" == "--bench" ]]; then
  # Versions tested together with the project's [bench] extra.
  binary lm_eval==0.4.13 datasets==5.2.0 evaluate==0.4.6 dill==0.4.1 multiprocess==0.70.19 \
    pytablewriter==1.2.1 DataProperty==1.1.1 mbstrdecoder==1.1.5 pathvalidate==3.3.1 tabledata==1.3.5 \
    tcolorpy==0.1.7 typepy==1.3.5 chardet==6.0.0.post1 more-itertools==11.2.1 nltk==3.10.4
  # Published as source only; all pure Python.
  python3 -m pip wheel --quiet --no-deps -w .whl sqlitedict==2.1.0 word2number==1.1 rouge_score==0.1.2
  mkdir -p .whl/data && cp -r ../shared/data/gsm8k .whl/data/
fi
du -sh .whl && ls .whl
