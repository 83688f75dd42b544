"""Writes the seed inputs in seeds/<target>/ from valid files (run from this folder, NumPy not needed)."""
import gzip
import os
import struct
import zipfile

FIX = os.path.join("..", "tests", "data")


def put(target, name, data):
    os.makedirs(os.path.join("seeds", target), exist_ok=True)
    with open(os.path.join("seeds", target, name), "wb") as f:
        f.write(data)


def idx(dims, data):
    return bytes([0, 0, 8, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + bytes(data)


put("idx", "labels", bytes([0]) + idx([3], [7, 2, 1]))
put("idx", "images", bytes([2]) + idx([2, 3, 2], range(12)))
put("idx", "images_gz", bytes([0x82]) + gzip.compress(idx([2, 3, 2], range(12)), mtime=0))
put("idx", "labels_gz", bytes([0x80]) + gzip.compress(idx([4], [9, 9, 0, 1]), mtime=0))

rec = lambda label, fill: bytes([label]) + bytes([fill]) * 3072
put("cifar", "one", bytes([0]) + rec(3, 10))
put("cifar", "two_gz", bytes([0x80]) + gzip.compress(rec(1, 0) + rec(9, 255), mtime=0))

for f in sorted(os.listdir(FIX)):
    if not f.endswith(".npz"):
        continue
    stem = f[:-4]
    with open(os.path.join(FIX, f), "rb") as fh:
        put("npz", stem, bytes([0b01111011]) + fh.read())
    with zipfile.ZipFile(os.path.join(FIX, f)) as z:
        for m in z.namelist():
            b = z.read(m)
            put("npy", stem + "_" + m, b)
            if b"'|O'" in b[:128]:
                hl = struct.unpack("<H", b[8:10])[0]
                count = b[10:10 + hl].split(b"'shape': (")[1].split(b",")[0].rstrip(b"L")
                put("npy", stem + "_" + m + ".pickle", b"P" + bytes([int(count)]) + b[10 + hl:])

# imdb_members: byte 0 settings, three u16 lengths, then the four members.
for f in sorted(os.listdir(FIX)):
    if not f.endswith(".npz") or "missing" in f:
        continue
    with zipfile.ZipFile(os.path.join(FIX, f)) as z:
        parts = [z.read(n) for n in ("x_train.npy", "y_train.npy", "x_test.npy", "y_test.npy")]
    head = bytes([0b01111011]) + b"".join(struct.pack("<H", len(p)) for p in parts[:3])
    put("imdb_members", f[:-4], head + b"".join(parts))
