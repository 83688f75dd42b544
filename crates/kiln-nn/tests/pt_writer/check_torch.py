"""Loads a kiln-written .pt file with real PyTorch and compares it with EXPECTED.json.

usage: check_torch.py FILE.pt EXPECTED.json

torch.load(weights_only=True) and torch.load(weights_only=True, mmap=True) (which needs
the 64-byte alignment of the storages) must both return an OrderedDict with the keys in
order and every tensor's dtype, shape and values as expected.
"""
import collections
import json
import sys

import torch

path, expected_path = sys.argv[1], sys.argv[2]
expected = json.load(open(expected_path), object_pairs_hook=collections.OrderedDict)
for mmap in (False, True):
    sd = torch.load(path, weights_only=True, mmap=mmap)
    assert isinstance(sd, collections.OrderedDict), type(sd)
    assert list(sd) == list(expected), (list(sd), list(expected))
    for key, t in sd.items():
        e = expected[key]
        assert t.dtype == getattr(torch, e["dtype"]), (key, t.dtype, e["dtype"])
        assert list(t.shape) == e["shape"], (key, t.shape, e["shape"])
        assert t.is_contiguous() and not t.requires_grad, key
        got = t.flatten().tolist()
        assert got == e["values"], (key, got, e["values"])
print(f"torch {torch.__version__} check ok: {len(sd)} tensors in {path} (also with mmap=True)")
