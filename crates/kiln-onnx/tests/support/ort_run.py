"""Runs ONNX models with ONNX Runtime for kiln-onnx's round-trip tests.

Usage: python3 ort_run.py MANIFEST.json

The manifest is a list of cases: {"model": path, "inputs": [{"name", "shape", "file"}],
"outputs": [{"file"}]}. Each input file holds little-endian f32 values; for each case the
script runs onnx.checker.check_model(full_check=True), then ONNX Runtime on the inputs, and
writes each output as little-endian f32 to the output's file, its shape beside it in
FILE.shape (comma-separated). It prints one line per case: "ok MODEL" or "error MODEL: why",
and exits 0 when it could run at all (exit 3 when onnx/onnxruntime are missing).
"""
import json
import sys

try:
    import numpy as np
    import onnx
    import onnxruntime as ort
except ImportError as e:  # the Rust test reports this as a skip (or a failure in CI)
    print(f"missing: {e}")
    sys.exit(3)


def main():
    cases = json.load(open(sys.argv[1]))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    for case in cases:
        path = case["model"]
        try:
            model = onnx.load(path)
            onnx.checker.check_model(model, full_check=True)
            sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
            feeds = {}
            for inp in case["inputs"]:
                dtype = np.int64 if inp.get("dtype") == "int64" else np.float32
                feeds[inp["name"]] = np.fromfile(inp["file"], dtype="<f4").astype(dtype).reshape(inp["shape"])
            outs = sess.run(None, feeds)
            for spec, val in zip(case["outputs"], outs):
                np.ascontiguousarray(val, dtype="<f4").tofile(spec["file"])
                with open(spec["file"] + ".shape", "w") as f:
                    f.write(",".join(str(d) for d in val.shape))
            print(f"ok {path}")
        except Exception as e:  # reported per case, so one bad model does not hide the others
            msg = str(e).replace("\n", " ")
            print(f"error {path}: {msg}")


if __name__ == "__main__":
    main()
