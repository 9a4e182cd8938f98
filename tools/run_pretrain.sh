#!/usr/bin/env bash
# bash tools/run_pretrain.sh [CONFIG] [KEY VALUE ...]
#   CONFIG: a YAML path or a name in pretrain/configs/ (default: synthetic_byol.yaml).
#   Makes the synthetic set first when the config uses it and it is missing (MAKE_SYNTHETIC_OPTS, e.g.
#   "--pretrain-images 512", passes size options to tools/make_synthetic.py).
#   With several visible GPUs it launches torchrun, one process per GPU; for several nodes set
#   NNODES, NODE_RANK, MASTER_ADDR (and MASTER_PORT) on every node.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=${PYTHON:-python3}; fi
# (find_spec: is it installed, without paying for importing torch)
if ! "$PY" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ('torch', 'torchvision', 'fvcore')))" 2>/dev/null; then
    bash tools/setup_env.sh
    PY=.venv/bin/python
fi

CONFIG=synthetic_byol.yaml
if [ $# -gt 0 ] && { [[ "$1" == *.yaml ]] || [[ "$1" == *.yml ]] || [ -f "$1" ]; }; then
    CONFIG=$1
    shift
fi

# Resolve the dataset the merged config points at (also validates the config and overrides).
info=$("$PY" - "$CONFIG" "$@" <<'PY'
import sys

from pretrain.config import load_config
from rimifm.errors import UserError
try:
    cfg = load_config(sys.argv[1], sys.argv[2:])
except UserError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)
print(cfg.DATA.DATASET, cfg.DATA.ROOT)
PY
) || exit 2
read -r DATASET ROOT <<< "$info"
if [ "$DATASET" = synthetic ] && [ ! -f "$ROOT/meta.json" ]; then
    echo "[run_pretrain] making the synthetic dataset in $ROOT"
    # shellcheck disable=SC2086  # word splitting of the options is intended
    "$PY" tools/make_synthetic.py --out "$ROOT" ${MAKE_SYNTHETIC_OPTS:-}
fi

NGPU=0  # no NVIDIA driver: skip asking torch (its start-up costs seconds on a small CPU)
if command -v nvidia-smi >/dev/null 2>&1; then
    NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
fi
NNODES=${NNODES:-1}
if [ "$NGPU" -gt 1 ] || [ "$NNODES" -gt 1 ]; then
    NPROC=${NPROC_PER_NODE:-$(( NGPU > 0 ? NGPU : 1 ))}
    if [ "$NNODES" -gt 1 ]; then
        exec "$PY" -m torch.distributed.run --nnodes "$NNODES" --node_rank "${NODE_RANK:?set NODE_RANK}" \
            --master_addr "${MASTER_ADDR:?set MASTER_ADDR}" --master_port "${MASTER_PORT:-29500}" \
            --nproc_per_node "$NPROC" tools/pretrain.py --config "$CONFIG" "$@"
    fi
    exec "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" tools/pretrain.py --config "$CONFIG" "$@"
fi
exec "$PY" tools/pretrain.py --config "$CONFIG" "$@"
