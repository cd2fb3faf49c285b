"""Shared memory: auto-memmapping, memmaps by reference, temp folders,
SharedArray, atomics, dump/load, vendoring (issue: shared memory)."""

import gc
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

import parallel
from parallel import (AtomicView, Parallel, atomic_add, atomic_max,
                      atomic_min, compare_and_swap, delayed, dump, load,
                      shared_array, shared_empty, shared_zeros)

from conftest import ROOT, parallel_paths, run_script, script_env

DTYPES = ["int32", "int64", "uint32", "uint64", "float32", "float64"]
N_UPDATES = 200_000


# --- tasks ----------------------------------------------------------------------
def describe(x):
    return (type(x).__name__, isinstance(x, np.memmap),
            getattr(x, "mode", None), bool(x.flags.writeable),
            np.asarray(x).copy())


def write_inplace(x):
    x[...] = 7
    return float(np.asarray(x).sum())


def write_at(x, i, value):
    x[i] = value
    return i


def bump(a, index, n):
    for _ in range(n):
        atomic_add(a, index, 1)
    return n


def is_memmap_and_folder(x):
    return isinstance(x, np.memmap), os.path.dirname(x.filename)


# --- auto-memmapping -------------------------------------------------------------
@pytest.mark.parametrize("max_nbytes,nbytes,memmapped", [
    (1000, 1000, False), (1000, 1008, True), ("1M", 1 << 20, False),
    ("1M", (1 << 20) + 8, True), (None, 4 << 20, False),
])
def test_auto_memmap_threshold(max_nbytes, nbytes, memmapped):
    a = np.arange(nbytes // 8, dtype=np.float64)
    [(name, is_mm, mode, writeable, values)] = Parallel(
        n_jobs=2, backend="loky", max_nbytes=max_nbytes)([delayed(describe)(a)])
    assert is_mm is memmapped, (max_nbytes, nbytes, name)
    np.testing.assert_array_equal(values, a)
    if memmapped:
        assert mode == "r" and not writeable


def test_read_only_error_mentions_knobs_b13():
    a = np.zeros(300_000)
    with pytest.raises(ValueError) as info:
        Parallel(n_jobs=2, backend="loky")(delayed(write_inplace)(a)
                                           for _ in range(2))
    text = str(info.value) + " ".join(getattr(info.value, "__notes__", []))
    assert "read-only" in text
    assert "max_nbytes" in text and "mmap_mode" in text, text
    assert not a.any()


@pytest.mark.parametrize("mmap_mode", ["r+", "w+", "c", None])
def test_writable_mmap_modes(mmap_mode):
    a = np.zeros(300_000)
    out = Parallel(n_jobs=2, backend="loky", mmap_mode=mmap_mode)(
        delayed(write_inplace)(a) for _ in range(2))
    assert out == [7.0 * a.size] * 2


def test_object_arrays_never_memmapped():
    a = np.array([object()] * 200_000 + [1], dtype=object)
    a[:] = 1
    [(name, is_mm, *_)] = Parallel(n_jobs=2, backend="loky", max_nbytes=10)(
        [delayed(describe)(a)])
    assert not is_mm and name == "ndarray"


# --- memmaps travel by reference -------------------------------------------------------
@pytest.fixture
def mm(tmp_path):
    path = tmp_path / "data.mmap"
    m = np.memmap(path, dtype=np.float64, mode="w+", shape=(40, 30))
    m[:] = np.arange(m.size, dtype=np.float64).reshape(m.shape)
    m.flush()
    yield m
    del m


@pytest.mark.parametrize("view", [
    "whole", "slice", "ndarray_view", "step", "transpose", "negative",
    "column"])
def test_memmap_views_travel_by_reference(mm, view):
    v = {"whole": lambda m: m, "slice": lambda m: m[5:9],
         "ndarray_view": lambda m: np.asarray(m)[3:],
         "step": lambda m: m[::2], "transpose": lambda m: m.T,
         "negative": lambda m: m[::-1, ::-1], "column": lambda m: m[:, 3]}[
        view](mm)
    # max_nbytes=None: only references can make them memmaps in workers
    [(name, is_mm, mode, writeable, values)] = Parallel(
        n_jobs=2, backend="loky", max_nbytes=None)([delayed(describe)(v)])
    assert is_mm, name
    np.testing.assert_array_equal(values, np.asarray(v))


def test_worker_writes_to_r_plus_memmap_reach_parent(tmp_path):
    path = tmp_path / "out.mmap"
    m = np.memmap(path, dtype=np.int64, mode="w+", shape=(20,))
    Parallel(n_jobs=2, backend="loky")(
        delayed(write_at)(m, i, i * 10) for i in range(20))
    np.testing.assert_array_equal(np.asarray(m), np.arange(20) * 10)
    strided = m[1::2]
    Parallel(n_jobs=2, backend="loky")(
        delayed(write_at)(strided, i, -1) for i in range(10))
    assert (m[1::2] == -1).all() and (m[::2] == np.arange(0, 200, 20)).all()


def test_temp_folder_argument_and_env(tmp_path, monkeypatch):
    a = np.ones(300_000)
    folder = tmp_path / "arg"
    folder.mkdir()
    [(is_mm, where)] = Parallel(n_jobs=2, backend="loky",
                                temp_folder=str(folder))(
        [delayed(is_memmap_and_folder)(a)])
    assert is_mm and os.path.dirname(where) == str(folder)
    assert os.path.basename(where).startswith("parallel_")
    assert os.listdir(folder) == []
    env_folder = tmp_path / "env"
    env_folder.mkdir()
    monkeypatch.setenv("PARALLEL_TEMP_FOLDER", str(env_folder))
    [(is_mm, where)] = Parallel(n_jobs=2, backend="loky")(
        [delayed(is_memmap_and_folder)(a)])
    assert is_mm and os.path.dirname(where) == str(env_folder)
    assert os.listdir(env_folder) == []


B12_SCRIPT = """
import glob, os, resource, signal, sys
import numpy as np
from parallel import Parallel, delayed
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (8 << 20, resource.RLIM_INFINITY))
folder = sys.argv[1]
big = np.ones(2_000_000)
try:
    Parallel(n_jobs=2, temp_folder=folder)(delayed(float)(big.sum())
                                           for _ in range(1))
    Parallel(n_jobs=2, temp_folder=folder)(delayed(np.mean)(big)
                                           for _ in range(2))
    print("NO ERROR")
except Exception as e:
    print("TYPE", type(e).__name__)
    print("OSERROR", isinstance(e, OSError))
    print("MESSAGE", str(e).replace(chr(10), " "))
print("LEFT", sorted(os.listdir(folder)))
"""


def test_segment_write_failure_is_oserror_b12(tmp_path):
    folder = tmp_path / "small"
    folder.mkdir()
    path = tmp_path / "b12.py"
    path.write_text(B12_SCRIPT)
    proc = subprocess.run([sys.executable, str(path), str(folder)],
                          cwd=ROOT, env=script_env(), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "OSERROR True" in out, out
    message = [line for line in out.splitlines()
               if line.startswith("MESSAGE")][0]
    assert str(folder) in message and "max_nbytes" in message, message
    assert "LEFT []" in out, out


# --- shared arrays ----------------------------------------------------------------
@pytest.mark.parametrize("make", ["zeros", "empty", "array"])
@pytest.mark.parametrize("dtype", ["int32", "float64", "complex128", "uint8"])
@pytest.mark.parametrize("order", ["C", "F"])
def test_shared_array_shapes_dtypes(make, dtype, order):
    shape = (4, 5)
    if make == "zeros":
        a = shared_zeros(shape, dtype, order=order)
        assert not a.any()
    elif make == "empty":
        a = shared_empty(shape, dtype, order=order)
    else:
        src = np.asfortranarray(np.arange(20).reshape(shape).astype(dtype)) \
            if order == "F" else np.arange(20).reshape(shape).astype(dtype)
        a = shared_array(src)
        np.testing.assert_array_equal(a, src)
    assert a.shape == shape and a.dtype == np.dtype(dtype)
    assert isinstance(a, parallel.SharedArray)
    assert a.flags.writeable
    assert (a.flags.f_contiguous if order == "F" else a.flags.c_contiguous)


def test_shared_array_rejects_objects():
    with pytest.raises(TypeError):
        shared_zeros(3, dtype=object)


def test_shared_array_worker_writes_visible_and_pickle_small():
    a = shared_zeros(1_250_000)        # 10 MB
    assert len(pickle.dumps(a)) < 10_000
    Parallel(n_jobs=2, backend="loky")(
        delayed(write_at)(a, i, i + 1.0) for i in range(0, 1_250_000, 250_000))
    assert a[250_000] == 250_001.0 and a[0] == 1.0
    assert a.sum() == sum(i + 1.0 for i in range(0, 1_250_000, 250_000))
    b = shared_zeros((6, 4), "int64", order="F")
    Parallel(n_jobs=2, backend="loky")(
        delayed(write_at)(b, (i, 1), i) for i in range(6))
    np.testing.assert_array_equal(b[:, 1], np.arange(6))


def _write_first_row(a, value):
    a[0] = value


@pytest.mark.parametrize("mode", ["r+", "w+", "c"])
@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_auto_memmapped_writes_reach_the_caller_in_r_plus(mode, layout):
    """mmap_mode 'r+'/'w+': what workers write into the auto-memmapped copy
    reaches the caller's array when the call ends (joblib loses it); 'c'
    keeps each worker's writes private."""
    base = np.zeros((400, 600), order="F" if layout == "F" else "C")
    a = base[:, ::2] if layout == "strided" else base
    before = a.copy()
    Parallel(n_jobs=2, mmap_mode=mode, max_nbytes=1000)(
        delayed(_write_first_row)(a, 7.0) for _ in range(2))
    if mode == "c":
        np.testing.assert_array_equal(a, before)
    else:
        assert (a[0] == 7.0).all() and not a[1:].any()
        if layout == "strided":
            assert not base[:, 1::2].any()


def _set_row(a, i):
    a[i] = i + 1


def _read_at(a, i):
    return float(a[i])


def test_r_plus_write_back_merges_views_and_keeps_the_callers_writes():
    """Each view of one array brings back only what its workers changed,
    and what the caller wrote meanwhile elsewhere stays."""
    a = np.zeros((4, 100_000))
    Parallel(n_jobs=2, mmap_mode="r+")(
        delayed(_set_row)(a[:], i) for i in range(4))    # 4 view objects
    np.testing.assert_array_equal(a[:, 0], [1, 2, 3, 4])
    b = np.zeros((4, 100_000))
    Parallel(n_jobs=2, mmap_mode="w+")(
        delayed(_set_row)(x, i) for i, x in enumerate([b.T, b.T[:, :]] * 2))
    np.testing.assert_array_equal(b[0, :4], [1, 2, 3, 4])
    c = np.full(200_000, np.nan)
    for i, _ in enumerate(Parallel(n_jobs=2, mmap_mode="r+",
                                   return_as="generator")(
            delayed(_read_at)(c, i) for i in range(4))):
        c[100 + i] = 7.0          # the caller writes during the call
    np.testing.assert_array_equal(c[100:104], [7.0] * 4)
    assert np.isnan(c[:100]).all()


MANY_RESULTS_SCRIPT = r"""
import gc, os, resource
import numpy as np
from parallel import Parallel, delayed
def big(i):
    return np.full(262144, float(i))        # 2 MB: comes back by segment
if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
    kept = []
    with Parallel(n_jobs=2) as p:
        for i in range(100):
            kept.extend(p(delayed(big)(j) for j in range(2)))
    kept[0][0] = 5.0                          # writable, private to us
    print(len(kept), kept[0][0], kept[-1][0], len(os.listdir("/proc/self/fd")))
    del kept
    gc.collect()
    print(sum("parallel_result" in line for line in open("/proc/self/maps")))
"""


@pytest.mark.skipif(sys.version_info < (3, 13) and
                    not parallel.shm_helper_available(build=False),
                    reason="needs Python 3.13's mmap(trackfd=False) or the "
                    "C helper")
def test_kept_large_results_hold_no_file_descriptor():
    """Results that came back through shared memory keep no descriptor
    open: 200 of them live at once under a limit of 128 descriptors, and
    their mappings go with them."""
    proc = run_script(MANY_RESULTS_SCRIPT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    count, first, last, fds = proc.stdout.split("\n")[0].split()
    assert (count, first, last) == ("200", "5.0", "1.0") and int(fds) < 64
    assert proc.stdout.split("\n")[1] == "0"


def _total(a):
    return float(a.sum())


@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
@pytest.mark.parametrize("return_as", ["list", "generator_unordered"])
def test_shared_array_held_only_by_its_task_lives_until_the_task_ran(
        backend, return_as):
    """A task may be the only owner of a shared array (made in the
    generator): the caller keeps it until the worker has used it."""
    out = Parallel(n_jobs=2, backend=backend, return_as=return_as)(
        delayed(_total)(parallel.shared_array(np.full(1000, i)))
        for i in range(40))
    assert sorted(out) == [1000.0 * i for i in range(40)]
    gc.collect()
    assert not [p for p in parallel._OWNED_SEGMENTS]


def _same(a):
    return a


def test_shared_array_back_in_its_owner_keeps_the_segment():
    """A SharedArray (or a view of it) that a worker returns to the process
    that owns it is a view of the owner and keeps the segment alive, so it
    can be sent again after the original is dropped."""
    s = shared_zeros((10, 4), order="F")
    s[:] = 1
    path = s.filename
    back = Parallel(n_jobs=2)(delayed(_same)(x)
                              for x in (s, s[::2], s.T, s[1:3, 1]))
    del s
    gc.collect()
    assert os.path.exists(path)
    assert Parallel(n_jobs=2)(delayed(_total)(b) for b in back) == \
        [40.0, 20.0, 40.0, 2.0]
    back[0][0, 0] = 5                 # one memory, as before the trip
    assert back[1][0, 0] == back[2][0, 0] == 5
    del back
    gc.collect()
    assert not os.path.exists(path)


def test_segment_removed_when_last_reference_dies():
    a = shared_zeros(1000)
    path = a.filename
    assert os.path.exists(path)
    view = a[10:]
    del a
    gc.collect()
    assert os.path.exists(path)
    del view
    gc.collect()
    assert not os.path.exists(path)


CREATOR_SCRIPT = """
import os, sys, time
import parallel
a = parallel.shared_zeros(1000)
a[0] = 5
print(a.filename, flush=True)
time.sleep(60)
"""


def test_segment_removed_by_tracker_when_creator_killed():
    proc = subprocess.Popen([sys.executable, "-c", CREATOR_SCRIPT], cwd=ROOT,
                            env=script_env(), stdout=subprocess.PIPE,
                            text=True)
    try:
        path = proc.stdout.readline().strip()
        assert path and os.path.exists(path)
        proc.kill()
        proc.wait(timeout=10)
        import time
        deadline = time.monotonic() + 10
        while os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


ATTACHER_SCRIPT = """
import pickle, sys
import parallel
a = pickle.loads(bytes.fromhex(sys.argv[1]))
a[0] += 1
print(type(a).__name__, int(a[0]))
if sys.argv[2] == "kill":
    import os, signal
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_attacher_never_removes_segment_b16(how):
    a = shared_zeros(10, "int64")
    a[0] = 41
    proc = subprocess.run(
        [sys.executable, "-c", ATTACHER_SCRIPT, pickle.dumps(a).hex(), how],
        cwd=ROOT, env=script_env(), capture_output=True, text=True,
        timeout=60)
    assert "SharedArray 42" in proc.stdout, proc.stderr
    import time
    time.sleep(0.5)   # give a (wrong) tracker the time to act
    assert os.path.exists(a.filename)
    assert a[0] == 42


# --- atomics -------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_atomic_scalar_ops(dtype):
    a = np.array([5, 10, 20], dtype=dtype)
    assert atomic_add(a, 0, 3) == 5 and a[0] == 8
    assert atomic_add(a, -1, 2) == 20 and a[2] == 22
    assert atomic_max(a, 1, 15) == 10 and a[1] == 15
    assert atomic_max(a, 1, 2) == 15 and a[1] == 15
    assert atomic_min(a, 1, 3) == 15 and a[1] == 3
    assert atomic_min(a, 1, 9) == 3 and a[1] == 3
    assert compare_and_swap(a, 0, 8, 1) == 8 and a[0] == 1
    assert compare_and_swap(a, 0, 8, 2) == 1 and a[0] == 1


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_atomic_tuple_index(order, dtype):
    a = np.zeros((3, 4), dtype=dtype, order=order)
    assert atomic_add(a, (1, 2), 5) == 0
    assert atomic_add(a, (-1, -1), 2) == 0
    expected = np.zeros((3, 4), dtype=dtype)
    expected[1, 2], expected[2, 3] = 5, 2
    np.testing.assert_array_equal(a, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_atomic_scatter_matches_add_at(dtype):
    rng = np.random.default_rng(0)
    idx = rng.integers(-10, 10, size=500)
    values = rng.integers(0, 5, size=500).astype(dtype)
    a = np.zeros(10, dtype=dtype)
    expected = np.zeros(10, dtype=dtype)
    np.add.at(expected, idx, values)
    previous = atomic_add(a, idx, values)
    np.testing.assert_array_equal(a, expected)
    assert len(previous) == 500
    b = np.zeros(10, dtype=dtype)
    atomic_add(b, np.array([1, 1, 1, 3]), 2)          # broadcast scalar
    assert b[1] == 6 and b[3] == 2
    prev = atomic_add(b, np.array([1, 1]), 1)
    assert sorted(int(p) for p in prev) == [6, 7]
    c = np.zeros(4, dtype=dtype)
    atomic_max(c, np.array([0, 0, 2]), np.array([3, 7, 1], dtype=dtype))
    np.testing.assert_array_equal(c, np.array([7, 0, 1, 0], dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_atomic_scatter_single_value_forms(dtype):
    """One value for every index (a Python scalar, a numpy scalar, an array
    of one value, any index shape); the caller's index is never changed."""
    idx = np.array([[-1, 0], [0, 9]])
    kept = idx.copy()
    for value in (3, np.array(3, dtype=dtype)[()], np.array([3], dtype=dtype),
                  np.array([[3]], dtype=dtype)):
        a = np.zeros(10, dtype=dtype)
        previous = atomic_add(a, idx, value)
        assert previous.shape == (2, 2) and previous.dtype == dtype
        np.testing.assert_array_equal(a, [6, 0, 0, 0, 0, 0, 0, 0, 0, 6])
        assert sorted(previous.ravel().tolist()) == [0, 0, 3, 3]
        np.testing.assert_array_equal(idx, kept)
    a = np.zeros(10, dtype=dtype)
    assert atomic_add(a, np.array([], dtype=np.int64), 5).shape == (0,)
    assert not a.any()
    with pytest.raises(ValueError, match="broadcast"):
        atomic_add(a, np.array([1, 2]), np.ones((1, 1, 1), dtype=dtype))


def test_atomic_add_threads_plain_array():
    a = np.zeros(1, dtype=np.int64)
    barrier = threading.Barrier(2, timeout=20)

    def work():
        barrier.wait()
        bump(a, 0, N_UPDATES)
    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert a[0] == 2 * N_UPDATES


@pytest.mark.parametrize("dtype", ["int64", "float64", "int32"])
def test_atomic_add_two_processes_b15(dtype):
    a = shared_zeros(1, dtype)
    Parallel(n_jobs=2, backend="loky", batch_size=1)(
        delayed(bump)(a, 0, N_UPDATES) for _ in range(2))
    assert a[0] == 2 * N_UPDATES


def test_atomic_view():
    a = np.zeros(4, dtype=np.int64)
    v = AtomicView(a)
    assert v.add(1, 5) == 0 and v.add(-1, 2) == 0
    assert v.max(1, 9) == 5 and v.min(1, 3) == 9
    assert v.compare_and_swap(1, 3, 4) == 3
    np.testing.assert_array_equal(a, [0, 4, 0, 2])
    with pytest.raises(IndexError):
        v.add(4, 1)
    assert v.add(np.int64(2), 1) == 0 and a[2] == 1     # numpy indices
    for method in (v.add, v.max, v.min):
        with pytest.raises(IndexError, match="bool"):
            method(True, 1)
        with pytest.raises(TypeError, match="index 1.5 is not an integer"):
            method(1.5, 1)
        with pytest.raises(TypeError, match="1.5 must be an integer for "
                           "the int64 array"):
            method(0, 1.5)
        with pytest.raises(OverflowError, match="does not fit in int64"):
            method(0, 2 ** 70)
    with pytest.raises(TypeError, match=r"values \(0, 'x'\) must be integers"):
        v.compare_and_swap(0, 0, "x")
    f = np.zeros(2)
    with pytest.raises(TypeError, match="'1' must be a number"):
        AtomicView(f).add(0, "1")
    for value in ("1", b"1"):       # numpy refuses strings: so do we
        with pytest.raises(TypeError, match="is not a number"):
            atomic_add(f, 0, value)
    np.testing.assert_array_equal(a, [0, 4, 1, 2])
    assert not f.any()


def unaligned_int64():
    raw = np.zeros(9 * 8 + 1, dtype=np.uint8)
    view = raw[1:].view(np.int64)
    assert not view.flags.aligned
    return view


@pytest.mark.parametrize("make,exc", [
    (lambda: np.zeros(4, dtype=np.float16), TypeError),
    (lambda: np.zeros(4, dtype=object), TypeError),
    (lambda: np.zeros(4, dtype=">i8"), TypeError),
    (lambda: [0, 0, 0], TypeError),
    (lambda: np.zeros(4, dtype=np.int64)[::2], ValueError),
    (unaligned_int64, ValueError),
    (lambda: np.zeros(4, dtype=np.int64).copy().setflags(write=False)
     or None, None),
])
def test_atomic_bad_targets(make, exc):
    if exc is None:
        a = np.zeros(4, dtype=np.int64)
        a.setflags(write=False)
        exc = ValueError
    else:
        a = make()
    with pytest.raises(exc):
        atomic_add(a, 0, 1)
    if not isinstance(a, list):
        assert not np.asarray(a).any()


def test_atomic_index_errors():
    a = np.zeros(4, dtype=np.int64)
    with pytest.raises(IndexError):
        atomic_add(a, 4, 1)
    with pytest.raises(IndexError):
        atomic_add(a, -5, 1)
    with pytest.raises(IndexError):
        atomic_add(a, np.array([0, 9]), 1)
    b = np.zeros((2, 3), dtype=np.int64)
    with pytest.raises(IndexError):
        atomic_add(b, (1,), 1)
    with pytest.raises(IndexError):
        atomic_add(b, (1, 2, 0), 1)
    with pytest.raises(IndexError):
        atomic_add(b, (2, 0), 1)
    assert not a.any() and not b.any()


# --- dump / load ------------------------------------------------------------------------------
def test_dump_load_round_trip(tmp_path):
    struct = np.zeros(3, dtype=[("x", "<i4"), ("y", "<f8")])
    struct["x"], struct["y"] = [1, 2, 3], [0.5, 1.5, 2.5]
    value = {"a": np.arange(10.0), "f": np.asfortranarray(np.ones((3, 4))),
             "be": np.arange(5, dtype=">i8"), "s": struct, "meta": [1, "x"]}
    path = tmp_path / "v.pkl"
    dump(value, path)
    for mode in (None, "r"):
        out = load(path, mmap_mode=mode)
        assert set(out) == set(value) and out["meta"] == [1, "x"]
        for k in ("a", "f", "be", "s"):
            np.testing.assert_array_equal(out[k], value[k])
            assert out[k].dtype == value[k].dtype or \
                k == "be" and mode is None and out[k].dtype == "=i8"
        assert out["f"].flags.f_contiguous
        # Memory-mapped arrays keep the saved byte order; arrays read into
        # memory are native, as in joblib.
        assert out["be"].dtype.byteorder == (">" if mode else "=")
    arr_path = tmp_path / "a.pkl"
    dump(np.arange(6.0), arr_path)
    m = load(arr_path, mmap_mode="r+")
    assert isinstance(m, np.memmap)
    m[2] = 42
    m.flush()
    del m
    np.testing.assert_array_equal(load(arr_path)[2], 42.0)


# --- vendoring ----------------------------------------------------------------------------------
VENDOR_SCRIPT = """
import sys
assert not any(p.rstrip('/') == %(root)r for p in sys.path), sys.path
from theirpkg._vendor import parallel
assert parallel.__name__ == "theirpkg._vendor.parallel"
assert parallel.__file__.startswith(%(tmp)r), parallel.__file__

def bump(a, n):
    for _ in range(n):
        parallel.atomic_add(a, 0, 1)
    return n

if __name__ == "__main__":
    a = parallel.shared_zeros(1, "int64")
    parallel.Parallel(n_jobs=2, backend="loky", batch_size=1)(
        parallel.delayed(bump)(a, 50_000) for _ in range(2))
    print("TOTAL", int(a[0]))
"""


def test_vendored_copy(tmp_path):
    vendor = tmp_path / "theirpkg" / "_vendor"
    vendor.mkdir(parents=True)
    (tmp_path / "theirpkg" / "__init__.py").write_text("")
    (vendor / "__init__.py").write_text("")
    for name in ("parallel.py", "_shm.c", "build_shm.py"):
        shutil.copy(os.path.join(ROOT, name), vendor / name)
    script = tmp_path / "use_vendored.py"
    script.write_text(VENDOR_SCRIPT % {"root": ROOT, "tmp": str(tmp_path)})
    env = script_env({"PARALLEL_SHM_CACHE": str(tmp_path / "cache")},
                     pythonpath=str(tmp_path))
    proc = subprocess.run([sys.executable, str(script)], cwd=str(tmp_path),
                          env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "TOTAL 100000" in proc.stdout, proc.stdout + proc.stderr


NO_SETUPTOOLS_BUILD = r"""
import importlib.util, sys
sys.modules["setuptools"] = None    # as a fresh venv of Python 3.12+
sys.path.insert(0, %(root)r)
import build_shm
path = build_shm.build(%(target)r)
spec = importlib.util.spec_from_file_location("_parallel_shm", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
ffi, lib = module.ffi, module.lib
cell = ffi.new("int64_t *", 5)
print("BUILT", lib.pshm_fetch_add_int64(cell, 2), cell[0], lib.pshm_lock_free())
"""


@pytest.mark.timeout(180)
def test_helper_builds_without_setuptools(tmp_path):
    # Vendored on Python >= 3.12 in a fresh venv: no setuptools, which
    # cffi's compile() needs there; the system compiler is called directly.
    script = NO_SETUPTOOLS_BUILD % {"root": ROOT,
                                    "target": str(tmp_path / "out")}
    done = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stderr
    assert "BUILT 5 7 1" in done.stdout, done.stdout + done.stderr


def _big_result(i, order):
    out = np.arange(300_000, dtype=np.float64).reshape(600, 500, order=order)
    return out * i


@pytest.mark.parametrize("order", ["C", "F"])
def test_large_results_travel_through_segments(order):
    """Results above 1 MB come back as plain, writable ndarrays (mapped from
    a segment, not sent through the pipe) with no file left behind."""
    out = Parallel(n_jobs=2)(delayed(_big_result)(i, order) for i in range(4))
    expected = np.arange(300_000, dtype=np.float64).reshape(600, 500,
                                                           order=order)
    for i, r in enumerate(out):
        assert type(r) is np.ndarray
        assert r.flags.writeable
        np.testing.assert_array_equal(r, expected * i)
    out[1][0, 0] = -1.0          # private to this result
    assert out[2][0, 0] == 0.0
    # a result can be passed to another call (copied, not by reference to
    # the removed segment file)
    sums = Parallel(n_jobs=2, max_nbytes=None)(delayed(np.sum)(r) for r in out)
    assert sums[3] == pytest.approx(expected.sum() * 3)
    sums = Parallel(n_jobs=2)(delayed(np.sum)(r) for r in out)
    assert sums[3] == pytest.approx(expected.sum() * 3)


# --- defects found by a user trial ------------------------------------------
@pytest.mark.parametrize("compress", [0, 3])
def test_dump_saves_shared_arrays_by_value(tmp_path, compress):
    """dump() writes a SharedArray's data, compressed or not, so another
    process loads it after the creator (and its segment) is gone."""
    path = str(tmp_path / "hist.pkl")
    code = ("import parallel\n"
            "sa = parallel.shared_zeros(5); sa[:] = 7\n"
            "parallel.dump({'hist': sa, 'view': sa[1:3]}, %r, compress=%d)\n"
            % (path, compress))
    assert run_script(code).returncode == 0
    out = parallel.load(path)
    np.testing.assert_array_equal(out["hist"], np.full(5, 7.0))
    np.testing.assert_array_equal(out["view"], np.full(2, 7.0))
    assert type(out["hist"]) is np.ndarray


PADDED = np.dtype([("a", "i1"), ("b", "f8")], align=True)
OFFSETS = np.dtype({"names": ["x", "y"], "formats": ["i4", "i4"],
                    "offsets": [0, 8], "itemsize": 16})


@pytest.mark.parametrize("dtype", [PADDED, OFFSETS])
def test_structured_dtypes_with_padding_round_trip(tmp_path, dtype):
    """dump/load and the trip to workers keep a structured dtype exactly
    (its padding, offsets and alignment), for copies, memmaps, shared
    arrays and their strided views."""
    a = np.zeros(6, dtype=dtype)
    name = dtype.names[1]
    a[name] = np.arange(6)
    path = str(tmp_path / "s.pkl")
    for compress in (0, 3):
        parallel.dump(a, path, compress=compress)
        for mode in (None, "r") if not compress else (None,):
            b = parallel.load(path, mmap_mode=mode)
            assert b.dtype == dtype and b.dtype.isalignedstruct == \
                dtype.isalignedstruct
            np.testing.assert_array_equal(b[name], np.arange(6))
    shared = parallel.shared_array(a)
    out = Parallel(n_jobs=2, max_nbytes=10)(
        delayed(_dtype_and_field)(x, name)
        for x in (shared, shared[::-2], a, a[::-2]))
    for (got, values), want in zip(out, ([0, 1, 2, 3, 4, 5], [5, 3, 1]) * 2):
        assert got == dtype and values == want


def _dtype_and_field(x, name):
    return x.dtype, x[name].tolist()


def _make_shared(i):
    s = parallel.shared_zeros(4)
    s[:] = i
    return s, s[1:3]


@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_shared_array_made_in_a_worker_comes_back_by_value(backend):
    out = Parallel(n_jobs=2, backend=backend)(
        delayed(_make_shared)(i) for i in range(4))
    for i, (whole, view) in enumerate(out):
        np.testing.assert_array_equal(whole, np.full(4, float(i)))
        np.testing.assert_array_equal(view, np.full(2, float(i)))


def test_dump_compress_and_file_objects(tmp_path):
    import io
    value = {"a": np.arange(10.0), "b": [np.ones((3, 2), order="F"), "x"]}
    for compress in (0, 3, True, ("zlib", 1)):
        path = str(tmp_path / ("v%s.pkl" % (compress,)))
        parallel.dump(value, path, compress=compress)
        out = parallel.load(path)
        np.testing.assert_array_equal(out["a"], value["a"])
        np.testing.assert_array_equal(out["b"][0], value["b"][0])
    buffer = io.BytesIO()
    parallel.dump(value, buffer)
    buffer.seek(0)
    out = parallel.load(buffer)
    np.testing.assert_array_equal(out["b"][0], value["b"][0])
    with pytest.raises(ValueError, match="compress"):
        parallel.dump(value, str(tmp_path / "bad.pkl"), compress=11)
    other = tmp_path / "plain.pkl"
    other.write_bytes(pickle.dumps([1, 2]))
    assert parallel.load(str(other)) == [1, 2]     # as joblib.load


class _Tagged(np.ndarray):
    """An ndarray subclass with an attribute that must survive pickling."""

    def __array_finalize__(self, obj):
        self.tag = getattr(obj, "tag", None)

    def __reduce__(self):
        reduced = super().__reduce__()
        return reduced[0], reduced[1], (reduced[2], self.tag)

    def __setstate__(self, state):
        super().__setstate__(state[0])
        self.tag = state[1]


def _subclass_samples(n):
    data = np.arange(n, dtype=np.float64)
    tagged = data.view(_Tagged)
    tagged.tag = "kept"
    return {
        "masked": np.ma.masked_greater(data, 10),
        "recarray": np.rec.fromarrays([data, data], names="a,b"),
        "matrix": np.asmatrix(data),
        "tagged": tagged,
    }


def _describe_subclass(x):
    return (type(x).__name__, int(np.ma.count_masked(x)) if
            isinstance(x, np.ma.MaskedArray) else None,
            getattr(x, "tag", None),
            float(np.asarray(x).sum() if x.dtype.names is None else
                  np.asarray(x["a"]).sum()))


def _make_subclass(kind, n):
    return _subclass_samples(n)[kind]


_NO_MATRIX_WARNING = pytest.mark.filterwarnings(
    "ignore:the matrix subclass:PendingDeprecationWarning")


@_NO_MATRIX_WARNING
@pytest.mark.parametrize("compress", [0, 3])
@pytest.mark.parametrize("mmap_mode", [None, "r"])
def test_dump_load_keep_ndarray_subclasses(tmp_path, compress, mmap_mode):
    # A masked array loaded without its mask is silently wrong data.
    path = str(tmp_path / "sub.pkl")
    for kind, value in _subclass_samples(100).items():
        parallel.dump(value, path, compress=compress)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)   # compressed+mmap
            out = parallel.load(path, mmap_mode=mmap_mode)
        assert type(out) is type(value), kind
        assert _describe_subclass(out) == _describe_subclass(value), kind
        if kind == "masked":
            np.testing.assert_array_equal(out.mask, value.mask)


@_NO_MATRIX_WARNING
@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [1000, 300_000])     # below and above 1 MB
def test_ndarray_subclasses_cross_process_boundaries(n):
    samples = _subclass_samples(n)
    for kind, value in samples.items():
        [got] = Parallel(n_jobs=2)(
            delayed(_describe_subclass)(value) for _ in range(1))
        assert got == _describe_subclass(value), kind
        [back] = Parallel(n_jobs=2)(
            delayed(_make_subclass)(kind, n) for _ in range(1))
        assert type(back) is type(value), kind
        assert _describe_subclass(back) == _describe_subclass(value), kind


def test_load_gives_native_byte_order_unless_memory_mapped(tmp_path):
    path = str(tmp_path / "be.pkl")
    swapped = np.arange(5, dtype=np.dtype("i8").newbyteorder())
    for compress in (0, 1):
        parallel.dump(swapped, path, compress=compress)
        out = parallel.load(path)
        assert out.dtype.isnative
        np.testing.assert_array_equal(out, swapped)
    parallel.dump(swapped, path)
    mapped = parallel.load(path, mmap_mode="r")
    assert mapped.dtype == swapped.dtype      # the file's bytes, as saved
    np.testing.assert_array_equal(mapped, swapped)
    del mapped


def test_dump_compress_names_bad_targets_and_unrewound_buffers(tmp_path):
    import io
    path = str(tmp_path / "c.pkl")
    for compress in ("zlib", "gzip", ("gzip", 3), ("zlib", 9)):
        parallel.dump({"a": np.arange(3)}, path, compress=compress)
        np.testing.assert_array_equal(parallel.load(path)["a"], np.arange(3))
    for compress in ("lz4", ("lzma", 10), "nope"):
        with pytest.raises(ValueError, match="compress"):
            parallel.dump(1, path, compress=compress)
    with pytest.raises(ValueError, match=r"filename must be .*got \{\}"):
        parallel.dump("foo", {})
    with pytest.raises(ValueError, match="filename must be"):
        parallel.load(42)
    buffer = io.BytesIO()
    parallel.dump(np.arange(3), buffer)       # as joblib: no seek(0) needed
    np.testing.assert_array_equal(parallel.load(buffer), np.arange(3))


def _change_in_place(a, name, value):
    """Set ``a.dtype``, ``a.shape`` or ``a.strides`` in place, as numpy
    allowed (deprecated since numpy 2.4/2.5); skip once numpy refuses."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            setattr(a, name, value)
        except AttributeError:
            pytest.skip("this numpy no longer changes %s in place" % name)


def test_atomics_revalidate_after_dtype_change():
    a = np.zeros(4, np.int64)
    atomic_add(a, 0, 1)
    _change_in_place(a, "dtype", np.float64)
    atomic_add(a, 1, 1)
    assert a[1] == 1.0


@pytest.mark.parametrize("op", ["atomic_add", "atomic_max", "atomic_min"])
def test_atomics_revalidate_after_in_place_changes(op):
    """The fast path of repeated calls notices every in-place change of the
    array made after its first use."""
    fn = getattr(parallel, op)
    a = np.zeros(4, np.int64)
    fn(a, 0, 1)
    a.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fn(a, 0, 1)
    a.flags.writeable = True
    with pytest.raises(ValueError, match="resize"):
        a.resize(1000)     # numpy refuses: the data never moves under us
    _change_in_place(a, "shape", (2, 2))
    with pytest.raises(IndexError, match="tuple"):
        fn(a, 3, 1)
    fn(a, (1, 1), 7)
    assert a[1, 1] == (7 if op != "atomic_min" else 0)
    _change_in_place(a, "shape", (4,))
    fn(a, 3, 1)
    _change_in_place(a, "strides", (0,))    # every element aliases a[0]
    with pytest.raises(ValueError, match="contiguous"):
        fn(a, 3, 1)


def test_atomics_numpy_integer_index_is_scalar_and_bool_is_refused():
    a = np.zeros(4, np.int64)
    previous = atomic_add(a, np.int64(1), 2)
    assert previous == 0 and np.ndim(previous) == 0
    assert a[1] == 2
    with pytest.raises(IndexError, match="bool"):
        atomic_add(a, True, 1)
    with pytest.raises(IndexError, match="bool"):
        atomic_add(np.zeros((2, 2), np.int64), (True, 0), 1)
    with pytest.raises(TypeError, match="compare_and_swap"):
        parallel.compare_and_swap(a, 1, 7.5, 9)
    with pytest.raises(ValueError, match="atomic_add"):
        atomic_add(a, np.array([1, 2]), [1, 2, 3])


FAILED_BUILD_SCRIPT = r"""
import sys
sys.modules["_parallel_shm"] = None     # no top-level helper either
import numpy as np
from theirpkg._vendor import parallel
try:
    parallel.atomic_add(np.zeros(2, np.int64), 0, 1)
except RuntimeError as e:
    print("ATOMICS", e)
"""


def _vendor_into(tmp_path, names=("parallel.py", "_shm.c", "build_shm.py")):
    """Copy ``names`` into tmp_path/theirpkg/_vendor (a package)."""
    vendor = tmp_path / "theirpkg" / "_vendor"
    vendor.mkdir(parents=True)
    (tmp_path / "theirpkg" / "__init__.py").write_text("")
    (vendor / "__init__.py").write_text("")
    for name in names:
        shutil.copy(os.path.join(ROOT, name), vendor / name)


def _run_vendored(tmp_path, code, env, timeout=120):
    """Run ``code`` as a script in tmp_path, theirpkg importable."""
    script = tmp_path / "script.py"
    script.write_text(code)
    return subprocess.run([sys.executable, str(script)], cwd=str(tmp_path),
                          env=script_env(env, pythonpath=str(tmp_path)),
                          capture_output=True, text=True, timeout=timeout)


def test_a_failed_helper_build_says_why_and_leaves_nothing(tmp_path):
    """Vendored with the C sources but no working compiler: the error names
    the cause once, and the cache keeps no half-built folder."""
    _vendor_into(tmp_path)
    proc = _run_vendored(tmp_path, FAILED_BUILD_SCRIPT,
                         {"PARALLEL_SHM_CACHE": str(tmp_path / "cache"),
                          "CC": str(tmp_path / "no-such-compiler")},
                         timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "ATOMICS" in proc.stdout and "cannot build the C helper" in \
        proc.stdout, proc.stdout
    assert proc.stdout.count("install cffi and a C compiler") == 1
    assert not (tmp_path / "cache").exists() or not any(
        (tmp_path / "cache").iterdir())


NO_HELPER_SCRIPT = r"""
import sys
sys.modules["_parallel_shm"] = None     # no top-level helper either
import numpy as np
from theirpkg._vendor import parallel
from theirpkg._vendor.parallel import Parallel, delayed

def fill(out, i):
    out[i] = i * i

assert parallel.HAS_SHM_HELPER is False
out = parallel.shared_zeros(6, np.int64)
Parallel(n_jobs=2)(delayed(fill)(out, i) for i in range(6))
print("FILLED", out.tolist())
print("MEMMAP", Parallel(n_jobs=2, max_nbytes=100)(
    delayed(type)(np.ones(1000)) for _ in range(2))[0].__name__)
try:
    parallel.atomic_add(out, 0, 1)
except RuntimeError as e:
    print("ATOMICS", e)
"""


def test_without_the_c_helper_everything_but_atomics_works(tmp_path):
    """A vendored parallel.py without _shm.c/build_shm.py and no compiled
    helper: loops, shared arrays and memmaps work; atomics raise an error
    that says how to build the helper."""
    _vendor_into(tmp_path, ["parallel.py"])
    proc = _run_vendored(tmp_path, NO_HELPER_SCRIPT,
                         {"PARALLEL_SHM_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    assert "FILLED [0, 1, 4, 9, 16, 25]" in proc.stdout, proc.stdout
    assert "MEMMAP memmap" in proc.stdout, proc.stdout
    assert "ATOMICS" in proc.stdout and "copy them next to parallel.py" in \
        proc.stdout and "_shm.c and build_shm.py" in proc.stdout, proc.stdout
    assert proc.stdout.count("build_shm.py") == 1, proc.stdout
    assert not (tmp_path / "cache").exists()


def test_helper_that_cannot_be_built_says_how_to_fix_it(tmp_path):
    # The sources are there but the cache folder cannot be made (a file
    # is in the way): the error names the cause and the ways out.
    _vendor_into(tmp_path)
    (tmp_path / "afile").write_text("not a folder")
    proc = _run_vendored(tmp_path, FAILED_BUILD_SCRIPT,
                         {"PARALLEL_SHM_CACHE": str(tmp_path / "afile")})
    assert "ATOMICS" in proc.stdout, proc.stdout + proc.stderr
    assert "python build_shm.py" in proc.stdout and \
        "PARALLEL_SHM_CACHE" in proc.stdout, proc.stdout


def test_shared_array_class_has_its_public_name():
    a = parallel.shared_zeros(2)
    assert type(a).__qualname__ == "SharedArray"
    assert repr(type(a)) == "<class 'parallel.SharedArray'>"


def test_dump_load_messages_in_joblibs_words(tmp_path):
    path = str(tmp_path / "c.pkl")
    for bad, text in ((-1, 'Non valid compress level given: "-1"'),
                      (10, 'Non valid compress level given: "10"'),
                      (("zlib", 3, "extra"), "Compress argument tuple should "
                       "contain exactly 2 elements"),
                      (("wrong", 3), 'Non valid compression method given: '
                       '"wrong"'),
                      ("lz4", 'Non valid compression method given: "lz4"')):
        with pytest.raises(ValueError) as info:
            parallel.dump(1, path, compress=bad)
        assert text in str(info.value)
    parallel.dump(np.arange(3), path, compress=3)
    with pytest.warns(UserWarning) as caught:
        parallel.load(path, mmap_mode="r+")
    assert str(caught[0].message) == (
        'mmap_mode "r+" is not compatible with compressed file %s. "r+" '
        "flag will be ignored." % path)


@pytest.mark.parametrize("name,compress,opener", [
    ("a.pkl.gz", 0, "gzip"), ("a.bz2", 0, "bz2"), ("a.xz", 3, "lzma"),
    ("a.lzma", True, "lzma"), ("a.pkl", "bz2", "bz2"),
    ("a.pkl", ("xz", 1), "lzma"), ("a.pkl", ("gzip", None), "gzip")])
def test_dump_compresses_as_joblib_with_standard_codecs(tmp_path, name,
                                                         compress, opener):
    """joblib#273/#626: the method of a level alone comes from the file
    name's extension; the file is a standard gzip/bz2/xz/lzma stream."""
    import importlib
    path = str(tmp_path / name)
    value = {"a": np.arange(100_000), "b": "text"}
    parallel.dump(value, path, compress=compress)
    assert os.path.getsize(path) < value["a"].nbytes // 4
    with importlib.import_module(opener).open(path) as f:
        assert len(f.read()) > value["a"].nbytes     # a valid stream
    out = parallel.load(path)
    np.testing.assert_array_equal(out["a"], value["a"])
    assert out["b"] == "text"


def test_load_reads_plain_pickles_and_names_joblibs_format(tmp_path):
    """sklearn's .pkl model files are plain pickles (joblib#694)."""
    import gzip
    import pickle
    path = str(tmp_path / "model.pkl")
    with open(path, "wb") as f:
        pickle.dump({"w": np.ones(3)}, f)
    np.testing.assert_array_equal(parallel.load(path)["w"], np.ones(3))
    with gzip.open(path + ".gz", "wb") as f:
        pickle.dump([1, 2], f)
    assert parallel.load(path + ".gz") == [1, 2]
    junk = str(tmp_path / "junk.bin")
    with open(junk, "wb") as f:
        f.write(b"not a pickle, not a dump")
    with pytest.raises(ValueError, match="neither a file written by"):
        parallel.load(junk)
    env = dict(os.environ)
    joblib = pytest.importorskip("joblib")
    os.environ.clear()            # importing joblib sets KMP_INIT_AT_FORK
    os.environ.update(env)
    joblib.dump(np.arange(3), str(tmp_path / "j.pkl"))
    with pytest.raises(ValueError, match="written by joblib.dump"):
        parallel.load(str(tmp_path / "j.pkl"))
