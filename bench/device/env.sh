# Sourced by the device scripts (check.sh, engine.sh): the carried wheels and data on the path,
# the environment, the GPU's name, ``step NAME TIMEOUT COMMAND...`` and the ``prunekit`` command.
exec > >(tee -a "$OUT/log.txt") 2>&1
START=$(date +%s)
CARRY=.devcarry
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$CARRY"/whl/*.whl || echo "wheel install failed"
export PYTHONPATH=/tmp/site:$PWD PRUNEKIT_DATA_DIR=$PWD/$CARRY/data HF_HUB_OFFLINE=1
export HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PRUNEKIT_PROGRESS=0 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'cuda', torch.cuda.is_available())"
step() {  # step NAME TIMEOUT COMMAND...
    local name=$1 limit=$2 t0
    shift 2
    t0=$(date +%s)
    echo "=== $name (at $((t0 - START)) s)"
    timeout "$limit" "$@"
    echo "=== $name rc=$? $(($(date +%s) - t0)) s"
}
# The `prunekit` command, from this checkout (nothing is pip-installed there).
mkdir -p /tmp/prunekit-bin
printf '#!/bin/bash\nexec python3 -c "import sys; from prunekit.cli import main; sys.argv[0] = \x27prunekit\x27; main()" "$@"\n' \
    >/tmp/prunekit-bin/prunekit
chmod +x /tmp/prunekit-bin/prunekit
export PATH=/tmp/prunekit-bin:$PATH
