#!/usr/bin/env bash
# Spark GPU resource discovery (spark.{worker,executor}.resource.gpu.discoveryScript): the GPUs nvidia-smi sees,
# as {"name": "gpu", "addresses": ["0", "1", ...]}. Used by bench/encode_gpu.py's standalone worker.
set -euo pipefail
ids=$(nvidia-smi --query-gpu=index --format=csv,noheader | sed 's/.*/"&"/' | paste -sd, -)
echo "{\"name\": \"gpu\", \"addresses\": [${ids}]}"
