#!/usr/bin/env bash
# Gets `python -m bench.gpu` ready for a GPU machine that has Python 3.12 and torch but none of
# our other dependencies, cannot reach the internet, and does not see ../shared:
#   .whl/  wheels (cp$PY, manylinux) of our dependencies other than torch and numpy (the GPU
#          image has its own), at the versions in .venv
#   .gpu/  WikiText-2 train/valid/test and the `hey` binary
# Both are in .gitignore. Then, with the device tool, carrying [".whl", ".gpu"]:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site PATH=$PWD/.gpu/bin:$PATH \
#     PYTHONUNBUFFERED=1 && python3 -m bench.gpu --data .gpu/data --out $OUT
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-3.12}  # the GPU image's Python
# What the server, the trainer and the bench import, and what those import in turn (checked by
# importing them with only torch and these on the path: see docs/benchmarks.md).
PKGS=(fastapi starlette pydantic pydantic_core pydantic-settings python-dotenv uvicorn httptools
  orjson annotated-types annotated-doc typing-inspection typing_extensions python-multipart
  opentelemetry-api anyio h11 idna click safetensors tqdm prometheus_client httpx httpcore
  certifi)
freeze=$(.venv/bin/pip freeze)
pins=()
for p in "${PKGS[@]}"; do
  pin=$(grep -i -E "^${p//[-_]/[-_]}==" <<<"$freeze") || { echo "$p is not in .venv" >&2; exit 1; }
  pins+=("$pin")
done
rm -rf .whl .gpu && mkdir -p .whl
python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version "$PY" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "${pins[@]}"
mkdir -p .gpu/data .gpu/bin
cp ../shared/data/wikitext-2/{train,valid,test}.txt .gpu/data/  # test.txt: bench.gpu_quality
cp "$(command -v hey)" .gpu/bin/
du -sh .whl .gpu
cat <<'RUN'
On the GPU machine (device tool: carry [".whl", ".gpu"], timeout 600 s):
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site PATH=$PWD/.gpu/bin:$PATH PYTHONUNBUFFERED=1 && python3 -m bench.gpu --data .gpu/data --out $OUT
RUN
