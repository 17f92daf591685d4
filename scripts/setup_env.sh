#!/usr/bin/env bash
# Set up .venv/ with everything maskformer_d2 needs (see requirements.txt), once.
# A second run returns within seconds when nothing changed. Any failure ends with one line
# "setup failed: ..." and a non-zero exit, and the stack is never marked ready half-installed.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
STAMP="$VENV/.maskformer_d2_ready"
LOG="$VENV/setup.log"
want=$(cat requirements.txt pyproject.toml setup.py scripts/setup_env.sh | sha256sum | cut -c1-16)

fail() { echo "setup failed: $*" >&2; exit 1; }
pin() { grep -E "^$1==" requirements.txt | head -1 | cut -d= -f3; }
run() {  # run a step quietly, keep its output in the log, stop with one line on failure
  local what=$1; shift
  echo "[setup] $what" >&2
  "$@" >>"$LOG" 2>&1 || fail "$what$(disk_hint) (details: $LOG, last lines below)
$(tail -n 5 "$LOG")"
}
disk_hint() {  # torch's PyPI build with its CUDA libraries takes ~6.5 GB in the venv
  grep -q "No space left on device" "$LOG" 2>/dev/null || return 0
  echo ": disk full, $VENV needs about 7 GB and $(df -h --output=avail "$VENV" | tail -1 | tr -d ' ') is free there"
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/python" -c "import torch, torchvision, detectron2" 2>/dev/null \
    && command -v chromium >/dev/null 2>&1; then
  exit 0
fi
rm -f "$STAMP"
[ -x "$VENV/bin/python" ] || { "$PY" -m venv "$VENV" || fail "could not create $VENV with $PY"; }
: >"$LOG"
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip --disable-pip-version-check)

# 1. torch + torchvision: keep a working pair, else install the pinned one.
if ! "$VPY" - >>"$LOG" 2>&1 <<'PYEOF'
import torch, torchvision
torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
PYEOF
then
  run "installing torch==$(pin torch) torchvision==$(pin torchvision) (about 1 min)" \
    "${PIP[@]}" install "torch==$(pin torch)" "torchvision==$(pin torchvision)"
fi

# 2. detectron2: keep a working one, else repack sal-detectron2 as a pure-Python wheel.
if ! "$VPY" -c "import detectron2.engine, detectron2.evaluation" >>"$LOG" 2>&1; then
  D2V=$(pin sal-detectron2)
  W=$(mktemp -d) || fail "no temp dir"
  run "downloading sal-detectron2==$D2V" "${PIP[@]}" download --no-deps --only-binary=:all: \
    --python-version 3.10 -d "$W" "sal-detectron2==$D2V"
  run "installing wheel tool" "${PIP[@]}" install wheel
  run "repacking detectron2 as pure Python" "$VPY" scripts/repack_detectron2.py "$W"
  run "installing detectron2" "${PIP[@]}" install --no-deps "$W"/out/*.whl
  rm -rf "$W"
fi

# 3. everything else, then the package itself (editable).
grep -v -E '^(torch|torchvision|sal-detectron2)==' requirements.txt >"$VENV/.reqs.txt"
run "installing fvcore, pycocotools, opencv, scipy, panopticapi, onnx, onnxruntime, openvino, pytest, ruff, timm, transformers, gradio, playwright" \
  "${PIP[@]}" install -r "$VENV/.reqs.txt" "torch==$("$VPY" -c 'import torch;print(torch.__version__.split("+")[0])')"
# detectron2's own pure-Python requirements (its METADATA, minus numpy<2)
run "installing detectron2's requirements" "${PIP[@]}" install "Pillow>=7.1" matplotlib "termcolor>=1.1" \
  yacs tabulate cloudpickle tqdm tensorboard "hydra-core>=1.1" "omegaconf>=2.1" black packaging
# 4. Chromium for the demo page's browser test (Playwright drives it; its own browser download
# cannot be used here): Debian's package, installed with apt-get as root or through sudo.
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=(); [ "$(id -u)" = 0 ] || SUDO=(sudo -n)
  command -v apt-get >/dev/null 2>&1 || fail "chromium is missing and there is no apt-get: install a Chromium named 'chromium' on the PATH"
  run "installing chromium (apt-get, about 1 min)" "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium"
fi
run "installing maskformer_d2 (editable)" "${PIP[@]}" install --no-deps --no-build-isolation -e .
"$VPY" -m maskformer_d2.utils.env --check --deps-only >>"$LOG" 2>&1 || fail "stack does not import after install (details: $LOG)
$(tail -n 5 "$LOG")"
echo "$want" >"$STAMP"
echo "[setup] ready: $VENV" >&2
