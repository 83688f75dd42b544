"""ONNX Runtime's side of examples/export_onnx.rs: classifies the MNIST test images with the
exported model and prints its accuracy and its agreement with kiln's predictions.

Usage: python3 export_onnx_check.py MODEL.onnx IMAGES.f32 LABELS.i64 KILN_PREDS.i64
(images: little-endian f32 [N, 1, 28, 28], normalised as kiln fed them). Prints one line:
"onnxruntime N_CORRECT N_AGREE N" (exit 3 when onnxruntime is missing).
"""
import sys

try:
    import numpy as np
    import onnxruntime as ort
except ImportError as e:
    print(f"missing: {e}")
    sys.exit(3)

model, images, labels, preds = sys.argv[1:5]
labels = np.fromfile(labels, dtype="<i8")
preds = np.fromfile(preds, dtype="<i8")
x = np.fromfile(images, dtype="<f4").reshape(len(labels), 1, 28, 28)
sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
name = sess.get_inputs()[0].name
out = np.concatenate([sess.run(None, {name: x[i:i + 500]})[0] for i in range(0, len(x), 500)])
ort_preds = out.argmax(axis=1)
print(f"onnxruntime {(ort_preds == labels).sum()} {(ort_preds == preds).sum()} {len(labels)}")
