#!/bin/bash
# prunekit's CUDA paths on a lent GPU machine, in one `device` run (about 6 minutes on an H200):
#   bash bench/device/prepare.sh            # here, once: builds .devcarry/
#   device run: command "bash bench/device/check.sh", carry [".devcarry"], timeout_s 560
# A dry run here: OUT=/tmp/devout DEV=cpu LAYERS=4 DRY=1 PATH=.venv/bin:$PATH bash bench/device/check.sh
# Every step has its own timeout and logs "=== name rc=N seconds" to $OUT/log.txt.
source bench/device/env.sh
W=/tmp/prunekit-check M=/tmp/smollm2-random DEV=${DEV:-cuda}
rm -rf "$W" "$M"
C="--n-samples 8 --seqlen 256 --device $DEV"
EVAL="--ppl wikitext2 --max-windows 4 --seqlen 512 --device $DEV"
# The unit suite first: with CUDA present, every CLI test without --device runs on the GPU.
[ -z "$DRY" ] && step unit 150 python3 -m pytest -q -m "not real" -n 14 -p no:cacheprovider \
    --timeout 100 --tb=line -rfE tests/unit
step model 60 python3 bench/device/random_model.py "$CARRY/smol" "$M" $LAYERS
# On an H200 a greedy step of this model takes 7-10 s (launch-bound: one window at a time).
step depth 90 prunekit -v prune -m "$M" --method blockpruner --blocks 4 $C --out "$W/bp" --save "$W/bp-model"
step width 90 prunekit -v prune -m "$M" --method fasp --ratio 0.2 $C --out "$W/fasp" --save "$W/fasp-model"
step combined 120 prunekit -v prune -m "$M" --method blockpruner+fasp --blocks 4 --sparsity 0.2 $C \
    --out "$W/comb" --save "$W/comb-model" --save-gguf "$W/comb.gguf"
step eval-export 60 prunekit eval "$W/comb-model" $EVAL --json "$OUT/eval-export.json"
step eval-replay 60 prunekit eval "$W/comb" $EVAL --json "$OUT/eval-replay.json"
step export-gguf 60 prunekit export "$W/fasp" --out "$W/fasp.gguf" --format gguf --device "$DEV"
step speed 90 prunekit bench-speed "$W/comb-model" --baseline "$M" --prefill 1x2048 --decode-batches 1 \
    --runs 3 --decode-runs 3 --device "$DEV" --json "$OUT/speed.json"
step target 150 prunekit -v prune -m "$M" --target-speedup 1.15 --phase decode --candidates attn $C \
    --out "$W/target"
step stream 90 prunekit -v prune -m "$M" --method fasp --sparsity 0.3 --stream --max-memory 100MB $C \
    --out "$W/stream" --save "$W/stream-model"
step stream-eval 60 prunekit eval "$M" --stream --max-memory 400MB $EVAL
for run in bp fasp comb target stream; do cp "$W/$run/report.md" "$OUT/report-$run.md" 2>/dev/null; done
[ -n "$DRY" ] && exit 0
LEFT=$((540 - ($(date +%s) - START)))
[ $LEFT -gt 60 ] && step latency $LEFT python3 bench/latency_model.py --model "$M" --device "$DEV" \
    --only blockpruner-0.22,fasp-0.4,fasp-0.2+blocks-8 --json "$OUT/latency.json" --md "$OUT/latency.md"
echo "done at $(($(date +%s) - START)) s"
