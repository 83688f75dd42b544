#!/usr/bin/env bash
# kiln-nn's tests/safetensors_half.rs has Python's reference safetensors reader and numpy check
# the BF16/F16 files kiln writes (no torch needed: F16 through safetensors.numpy, BF16 decoded
# from its bits); the PyTorch fixtures they also read are committed.
set -euo pipefail
if python3 -c "import safetensors, numpy" 2>/dev/null; then
  python3 -c "import safetensors, numpy; print('safetensors', safetensors.__version__, 'numpy', numpy.__version__)"
  exit 0
fi
python3 -m pip install --quiet "numpy<3" "safetensors>=0.4"
