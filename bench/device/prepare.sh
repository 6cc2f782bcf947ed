#!/bin/bash
# Build the folder a `device` run carries (.devcarry/, ignored by git): the wheels the GPU
# image lacks, the offline corpora, and SmolLM2-135M's config + tokenizer (its weights do not
# fit the 64 MiB carry, so check.sh runs a random model of the same shape). Run here, from the
# repository root, with the project's venv: bash bench/device/prepare.sh
set -euo pipefail
PY=${PY:-.venv/bin/python}
CARRY=.devcarry
grep -qx "/$CARRY/" .git/info/exclude || echo "/$CARRY/" >> .git/info/exclude
rm -rf "$CARRY" && mkdir -p "$CARRY/whl" "$CARRY/data"
# The GPU image (KINDS.md) has torch, accelerate, typer, rich, safetensors, tokenizers, but an
# older transformers and no gguf or pydantic: carry the versions this venv runs.
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$CARRY/whl" "transformers==$(version transformers)" "gguf==$(version gguf)" \
    "pydantic==$(version pydantic)" "pydantic-core==$(version pydantic-core)" \
    "annotated-types==$(version annotated-types)" "typing-inspection==$(version typing-inspection)"
cp -r "${PRUNEKIT_DATA_DIR:-../shared/data}/corpora" "$CARRY/data/"
"$PY" - "$CARRY/smol" <<'PY'
import sys
from prunekit.models.loading import load_model
loaded = load_model("smollm2-135m", dtype="fp32", device="cpu")
loaded.tokenizer.save_pretrained(sys.argv[1])
config = loaded.model.config
config.quantization_config = None  # the GGUF's; the random model is plain bf16
del config.quantization_config
config.save_pretrained(sys.argv[1])
loaded.model.generation_config.save_pretrained(sys.argv[1])
PY
du -sh "$CARRY"
