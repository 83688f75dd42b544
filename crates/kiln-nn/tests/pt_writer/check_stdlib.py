"""Checks a kiln-written .pt file with Python's standard library only (no torch).

usage: check_stdlib.py FILE.pt EXPECTED.json

The archive is read with zipfile (every member stored, CRCs right, data 64-byte aligned as
torch's writer aligns it, byteorder `little`, version 3); data.pkl is unpickled with a
restricted Unpickler that, like torch.load(weights_only=True), allows only the torch
globals a state dict needs (stand-ins for them; anything else raises) and resolves the
('storage', type, key, 'cpu', numel) persistent ids from the data/ records. Every tensor's
dtype, shape, stride, offset and values are compared with EXPECTED.json
({key: {"dtype": "float32", "shape": [..], "values": [..]}} in order).
"""
import collections
import io
import json
import math
import pickle
import struct
import sys
import zipfile

STORAGES = {
    "FloatStorage": ("f", 4, "float32"),
    "DoubleStorage": ("d", 8, "float64"),
    "HalfStorage": ("e", 2, "float16"),
    "BFloat16Storage": (None, 2, "bfloat16"),
    "LongStorage": ("q", 8, "int64"),
    "IntStorage": ("i", 4, "int32"),
    "ShortStorage": ("h", 2, "int16"),
    "CharStorage": ("b", 1, "int8"),
    "ByteStorage": ("B", 1, "uint8"),
    "BoolStorage": ("?", 1, "bool"),
}


class StorageType:
    def __init__(self, name):
        self.name = name


def rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks, metadata=None):
    assert isinstance(hooks, collections.OrderedDict) and not hooks, hooks
    return ("tensor", storage, offset, tuple(size), tuple(stride), requires_grad)


path, expected_path = sys.argv[1], sys.argv[2]
raw = open(path, "rb").read()
z = zipfile.ZipFile(path)
assert z.testzip() is None, "bad CRC"
names = z.namelist()
prefix = names[0].split("/")[0]
assert all(n.startswith(prefix + "/") for n in names), names
assert names[0] == prefix + "/data.pkl", names
for info in z.infolist():
    assert info.compress_type == zipfile.ZIP_STORED, info
    off = info.header_offset
    assert raw[off:off + 4] == b"PK\x03\x04"
    name_len, extra_len = struct.unpack("<HH", raw[off + 26:off + 30])
    data = off + 30 + name_len + extra_len
    assert data % 64 == 0, (info.filename, data)
    assert raw[off + 30 + name_len:off + 32 + name_len] == b"FB", info.filename
assert z.read(prefix + "/byteorder") == b"little"
assert z.read(prefix + "/version").strip() == b"3"


class Restricted(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "torch" and name in STORAGES:
            return StorageType(name)
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return rebuild_tensor_v2
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")

    def persistent_load(self, pid):
        kind, storage_type, key, location, numel = pid
        assert kind == "storage" and location == "cpu", pid
        data = z.read(f"{prefix}/data/{key}")
        code, size, dtype = STORAGES[storage_type.name]
        assert len(data) == numel * size, (key, len(data), numel)
        if code is None:  # bfloat16: the top half of a float32
            values = [struct.unpack("<f", b"\0\0" + data[i:i + 2])[0] for i in range(0, len(data), 2)]
        else:
            values = list(struct.unpack(f"<{numel}{code}", data))
        return (dtype, values)


sd = Restricted(io.BytesIO(z.read(prefix + "/data.pkl"))).load()
assert type(sd) is collections.OrderedDict, type(sd)
expected = json.load(open(expected_path), object_pairs_hook=collections.OrderedDict)
assert list(sd) == list(expected), (list(sd), list(expected))
for key, t in sd.items():
    tag, (dtype, values), offset, size, stride, requires_grad = t
    e = expected[key]
    assert tag == "tensor" and not requires_grad
    assert dtype == e["dtype"], (key, dtype, e["dtype"])
    assert list(size) == e["shape"], (key, size, e["shape"])
    contiguous, s = [], 1
    for d in reversed(size):
        contiguous.insert(0, s)
        s *= max(d, 1)
    assert list(stride) == contiguous, (key, stride)
    n = math.prod(size)
    got = values[offset:offset + n]
    assert len(got) == len(e["values"]) and all(
        g == w for g, w in zip(got, e["values"])
    ), (key, got, e["values"])
print(f"stdlib check ok: {len(sd)} tensors in {path}")
