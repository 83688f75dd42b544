#!/usr/bin/env bash
# kiln-train's TensorBoard test reads the event files back with the tensorboard package's own
# reader (EventAccumulator).
set -euo pipefail
if python3 -c "import tensorboard" 2>/dev/null; then
  python3 -c "import tensorboard; print('tensorboard', tensorboard.__version__)"
  exit 0
fi
python3 -m pip install --quiet "tensorboard==2.21.0"
