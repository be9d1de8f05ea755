#!/usr/bin/env bash
# The GPU benches in one go, for whenever a GPU machine is available (docs/operations.md, "A GPU run"):
#
#   bench/gpu.sh                      # on a GPU machine, from the repository root: install, bench, write BENCHMARKS.md
#   bench/gpu.sh --dry-run            # anywhere: the same steps on the CPU at toy sizes; installs are only printed
#   bench/gpu.sh --benchmarks-md FILE # write the sections to FILE instead of BENCHMARKS.md
#   bench/gpu.sh --no-spark           # leave out the Spark job (the section says so)
#
# 1. installs what is missing: the venv (`make setup`, which takes the CUDA build of torch where nvidia-smi
#    exists), a CUDA torch if the venv has the CPU one, faiss-gpu in place of faiss-cpu, Java 17 (apt) for Spark;
# 2. bench/encode_gpu.py: texts/s and real tokens/s, fp32 / bf16, token budgets 4k-64k, then the Spark job on a
#    loopback standalone cluster whose executors get one GPU each ("Encoder on GPU");
# 3. bench/faiss_gpu.py: exact and IVF search on the GPU against the CPU, 1M x 384 ("FAISS on GPU").
# Each step has a time limit so the whole run stays under 8 minutes; the total is printed at the end.
# Environment: LLMFEAT_VENV (default .venv), LLMFEAT_PYTHON (default $LLMFEAT_VENV/bin/python).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DRY=0
MD=BENCHMARKS.md
SPARK=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --benchmarks-md) MD="$2"; shift ;;
    --no-spark) SPARK=(--spark-texts 0) ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "bench/gpu.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
VENV=${LLMFEAT_VENV:-.venv}
PY=${LLMFEAT_PYTHON:-$VENV/bin/python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
START=$SECONDS
say() { echo "== [$((SECONDS - START))s] $*"; }
install() {  # run an install command, or only show it in a dry run
  if [ "$DRY" = 1 ]; then echo "   (dry run, not run) $*"; else echo "   + $*"; "$@"; fi
}

say "1/3 setup"
if [ "$DRY" = 0 ] && ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "bench/gpu.sh: no nvidia-smi, so no NVIDIA GPU here; use --dry-run to check the script on a CPU" >&2
  exit 1
fi
[ "$DRY" = 0 ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if [ ! -x "$PY" ]; then install make setup; fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  # the CPU wheel came from the CPU index; PyPI's Linux wheel of the same version is the CUDA build
  TORCH=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null || echo 2.13.0)
  install "$PY" -m pip install -q --force-reinstall --no-deps "torch==$TORCH"
fi
if ! "$PY" -c "import faiss, sys; sys.exit(0 if faiss.get_num_gpus() > 0 else 1)" 2>/dev/null; then
  FAISS=$("$PY" -c "import faiss; print(faiss.__version__)" 2>/dev/null || echo 1.15.1)
  install "$PY" -m pip uninstall -q -y faiss-cpu
  install "$PY" -m pip install -q "faiss-gpu==$FAISS"
fi
if ! command -v java >/dev/null 2>&1 && [ -z "${JAVA_HOME:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    install apt-get install -y -q openjdk-17-jre-headless
  else
    echo "   no Java and no root apt-get: the Spark part of the encoder bench will be skipped (it says so)"
  fi
fi
"$PY" - <<'EOF'
import faiss, torch
print(f"   torch {torch.__version__}, CUDA {torch.cuda.is_available()} ({torch.cuda.device_count()} devices); "
      f"faiss {faiss.__version__}, {faiss.get_num_gpus()} GPUs")
EOF

DRYFLAG=()
[ "$DRY" = 1 ] && DRYFLAG=(--dry-run)
say "2/3 encoder bench (bench/encode_gpu.py)"
timeout 270 "$PY" bench/encode_gpu.py "${DRYFLAG[@]}" "${SPARK[@]}" --benchmarks-md "$MD"
say "3/3 FAISS bench (bench/faiss_gpu.py)"
timeout 120 "$PY" bench/faiss_gpu.py "${DRYFLAG[@]}" --benchmarks-md "$MD"
say "done in $((SECONDS - START)) s; sections \"Encoder on GPU\" and \"FAISS on GPU\" written to $MD"
