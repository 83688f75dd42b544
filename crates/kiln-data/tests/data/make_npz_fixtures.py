"""Writes the small .npz fixtures of tests/npz.rs the way NumPy and Keras write them.

Run with NumPy installed (numpy 2.4 made the checked-in files): python3 make_npz_fixtures.py
"""
import io
import pickle
import struct
import zipfile

import numpy as np

X_TRAIN = [[1, 14, 22, 16], [5, 25, 100, 43, 838], [12]]
Y_TRAIN = [1, 0, 1]
X_TEST = [[7, 8], [2**33]]
Y_TEST = [0, 1]


def obj(seqs):
    a = np.empty(len(seqs), dtype=object)
    for i, s in enumerate(seqs):
        a[i] = list(s)
    return a


def arrays():
    return dict(x_train=obj(X_TRAIN), y_train=np.array(Y_TRAIN), x_test=obj(X_TEST),
                y_test=np.array(Y_TEST))


# 1. numpy 2's np.savez: stored members, zip64 local headers, pickle protocol 4.
np.savez("imdb_numpy2.npz", **arrays())
# 2. np.savez_compressed: deflated members.
np.savez_compressed("imdb_compressed.npz", **arrays())


def npy_v1(header, body):
    header = header + " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1") + body


def write_zip(path, members):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)


# 3. numpy < 1.17 under Python 3: pickle protocol 2 (bytes through _codecs.encode), the module
#    numpy.core.multiarray, and a plain zip (no zip64).
def old_npy(a):
    if a.dtype == object:
        p = pickle.dumps(a, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        return npy_v1("{'descr': '|O', 'fortran_order': False, 'shape': (%d,), }" % len(a), p)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a)
    return buf.getvalue()


write_zip("imdb_protocol2.npz", {k + ".npy": old_npy(v) for k, v in arrays().items()})


# 4. Python 2 numpy, written opcode by opcode: GLOBAL, SHORT_BINSTRING, BININT*, LONG1 and
#    a header whose shape has Python 2's long suffix.
def py2_pickle(seqs):
    out = bytearray(b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85U\x01b\x87Rq\x03")
    out += b"(K\x01K%c\x85cnumpy\ndtype\nq\x04U\x02O8K\x00K\x01\x87Rq\x05(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK?tb\x89]q\x06(" % len(seqs)
    for s in seqs:
        out += b"](" if len(s) > 1 else b"]"
        for w in s:
            if w < 256:
                out += b"K" + bytes([w])
            elif w < 65536:
                out += b"M" + struct.pack("<H", w)
            elif w < 2**31:
                out += b"J" + struct.pack("<i", w)
            else:
                out += b"\x8a\x08" + struct.pack("<q", w)
        out += b"e" if len(s) > 1 else b"a"
    out += b"etb."
    return bytes(out)


members = {}
for split, xs, ys in (("train", X_TRAIN, Y_TRAIN), ("test", X_TEST, Y_TEST)):
    p = py2_pickle(xs)
    assert [list(s) for s in pickle.loads(p, encoding="latin1")] == xs
    members["x_%s.npy" % split] = npy_v1(
        "{'descr': '|O', 'fortran_order': False, 'shape': (%dL,), }" % len(xs), p)
    members["y_%s.npy" % split] = old_npy(np.array(ys, dtype="<i8"))
write_zip("imdb_py2.npz", members)

# 5. Equal-length reviews: np.array makes a 2-D int32 array (Fortran order here), and uint8 labels.
np.savez("imdb_matrix.npz", x_train=np.asfortranarray(np.array([[4, 5, 6], [7, 8, 9]], dtype="<i4")),
         y_train=np.array([0, 1], dtype="u1"), x_test=obj(X_TEST), y_test=np.array(Y_TEST))

# 6. One member missing (no y_test).
a = arrays()
del a["y_test"]
np.savez("imdb_missing_member.npz", **a)

for f in ("imdb_numpy2.npz", "imdb_compressed.npz", "imdb_protocol2.npz", "imdb_py2.npz", "imdb_matrix.npz"):
    with np.load(f, allow_pickle=True) as z:
        assert [list(s) for s in z["x_test"]] == X_TEST, f
