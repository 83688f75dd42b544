#!/usr/bin/env bash
# kiln-onnx's tests run exported models in ONNX Runtime and check them with onnx.checker;
# the fixtures were generated with torch (not needed to run the tests).
set -euo pipefail
if python3 -c "import onnx, onnxruntime, numpy" 2>/dev/null; then
  python3 -c "import onnx, onnxruntime; print('onnx', onnx.__version__, 'onnxruntime', onnxruntime.__version__)"
  exit 0
fi
python3 -m pip install --quiet "numpy<3" "onnx==1.23.2" "onnxruntime==1.32.0"
