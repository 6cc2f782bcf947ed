#!/bin/bash
# The one engine on a lent GPU (issue 25, item 4), in one `device` run of at most 8 minutes:
#   bash bench/device/prepare.sh            # here, once: builds .devcarry/
#   device run: command "bash bench/device/engine.sh", carry [".devcarry"], timeout_s 540
# A dry run here: OUT=/tmp/devout TINY=--tiny PATH=.venv/bin:$PATH bash bench/device/engine.sh
# Rows: $OUT/engine-batches.json (1.1B-shaped, in memory, batch 1 vs 8: one BlockPruner step and
# FASP), $OUT/engine-streamed.json (7B-shaped, FASP's default streamed under --max-memory 24GB).
source bench/device/env.sh
step batches 200 python3 bench/device/engine.py batches "$CARRY" "$OUT/engine-batches.json" $TINY
step streamed 300 python3 bench/device/engine.py streamed "$CARRY" "$OUT/engine-streamed.json" $TINY
echo "done at $(($(date +%s) - START)) s"
