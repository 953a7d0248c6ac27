#!/usr/bin/env bash
# Prepare, on the development machine, the wheels the GPU machine lacks (it has torch,
# transformers, peft, safetensors and accelerate, but not mergekit or pydantic), for
# Python 3.12 x86-64. They land in .whl/ (git-ignored); carry it with the device call:
#
#   bash benchmarks/device_setup.sh
#   device run, carry [".whl"], command:
#     python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
#     PYTHONPATH=/tmp/site MKR_SITES=/tmp/site python3 benchmarks/gpu_check.py --layers 28 &&
#     PYTHONPATH=/tmp/site MKR_SITES=/tmp/site python3 benchmarks/merge_speed.py --layers 4 --cuda
#
# Both scripts start each command through site.addsitedir(MKR_SITES) (benchmarks/_launch.py),
# which runs mergekit_reasoning.pth, so the stock mergekit-yaml finds the method there too.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
python3 -m pip wheel --quiet --no-deps -w .whl .
for spec in mergekit==0.1.5 immutables pydantic pydantic-core annotated-types typing-inspection; do
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$spec"
done
du -sh .whl && ls .whl
