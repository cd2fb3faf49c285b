"""Tests of the C helper (_shm.c, built by build_shm.py) called directly.

Build it first: ``python build_shm.py``.  These tests skip when the
extension is absent; parallel.py's own tests cover the Python wrappers.
"""

import errno
import multiprocessing
import os
import resource
import signal
import stat
import threading

import numpy as np
import pytest

_parallel_shm = pytest.importorskip("_parallel_shm")
ffi, lib = _parallel_shm.ffi, _parallel_shm.lib

JOIN_TIMEOUT_S = 60
N_UPDATES = 200_000
REPEATS = 10

# numpy dtype -> (C type, function suffix, PSHM_* dtype code)
TYPES = {
    np.int32: ("int32_t", "int32", lib.PSHM_INT32),
    np.int64: ("int64_t", "int64", lib.PSHM_INT64),
    np.uint32: ("uint32_t", "uint32", lib.PSHM_UINT32),
    np.uint64: ("uint64_t", "uint64", lib.PSHM_UINT64),
    np.float32: ("float", "float32", lib.PSHM_FLOAT32),
    np.float64: ("double", "float64", lib.PSHM_FLOAT64),
}
INT_TYPES = [np.int32, np.int64, np.uint32, np.uint64]
FLOAT_TYPES = [np.float32, np.float64]
OPS = {lib.PSHM_ADD: np.add, lib.PSHM_MAX: np.maximum, lib.PSHM_MIN: np.minimum}


def ptr(arr):
    """Typed cdata pointer to the data of numpy array `arr`."""
    return ffi.cast(TYPES[arr.dtype.type][0] + " *", ffi.from_buffer(arr))


def op(name, dtype):
    """The C function pshm_<name>_<suffix> for numpy dtype `dtype`."""
    return getattr(lib, "pshm_%s_%s" % (name, TYPES[dtype][1]))


def run_in_two_threads(work):
    """Run `work()` in two threads started together; fail if one hangs."""
    barrier = threading.Barrier(2)
    threads = [threading.Thread(target=lambda: (barrier.wait(), work())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT_S)
    assert not any(t.is_alive() for t in threads), "threads hung"


def join_all(processes):
    """Join `processes` within JOIN_TIMEOUT_S; kill and fail on a hang."""
    for p in processes:
        p.join(JOIN_TIMEOUT_S)
    hung = [p for p in processes if p.is_alive()]
    for p in hung:
        p.kill()
        p.join()
    assert not hung, "worker processes hung"
    assert [p.exitcode for p in processes] == [0] * len(processes)


# ---- single-element semantics ----------------------------------------------

@pytest.mark.parametrize("dtype", list(TYPES))
def test_single_element_semantics(dtype):
    a = np.array([5], dtype=dtype)
    p = ptr(a)
    assert op("fetch_add", dtype)(p, 3) == 5 and a[0] == 8
    assert op("fetch_max", dtype)(p, 10) == 8 and a[0] == 10
    assert op("fetch_max", dtype)(p, 1) == 10 and a[0] == 10
    assert op("fetch_min", dtype)(p, 4) == 10 and a[0] == 4
    assert op("fetch_min", dtype)(p, 7) == 4 and a[0] == 4
    assert op("cas", dtype)(p, 4, 20) == 4 and a[0] == 20     # swapped
    assert op("cas", dtype)(p, 4, 30) == 20 and a[0] == 20    # found != expected


@pytest.mark.parametrize("dtype", INT_TYPES)
@pytest.mark.parametrize("start, add", [("max", 1), ("max", "max"), ("min", "max")])
def test_integer_add_wraps_like_numpy(dtype, start, add):
    info = np.iinfo(dtype)
    start, add = (getattr(info, x) if isinstance(x, str) else x for x in (start, add))
    a = np.array([start], dtype=dtype)
    expected = a + np.array([add], dtype=dtype)          # numpy wraps silently
    assert op("fetch_add", dtype)(ptr(a), add) == start
    assert a[0] == expected[0]


@pytest.mark.parametrize("dtype", FLOAT_TYPES)
def test_float_nan_and_signed_zero(dtype):
    a = np.array([1.5], dtype=dtype)
    assert op("fetch_add", dtype)(ptr(a), 0.25) == 1.5 and a[0] == 1.75
    assert op("fetch_max", dtype)(ptr(a), float("nan")) == 1.75 and a[0] == 1.75
    assert op("fetch_min", dtype)(ptr(a), float("nan")) == 1.75 and a[0] == 1.75
    a[0] = np.nan                                  # a NaN in place stays
    assert np.isnan(op("fetch_max", dtype)(ptr(a), 3.0)) and np.isnan(a[0])
    assert np.isnan(op("fetch_min", dtype)(ptr(a), 3.0)) and np.isnan(a[0])
    assert np.isnan(op("cas", dtype)(ptr(a), float("nan"), 2.0))  # same bits
    assert a[0] == 2.0
    a[0] = 0.0                                     # CAS compares bits: -0.0 != 0.0
    found = op("cas", dtype)(ptr(a), -0.0, 9.0)
    assert found == 0.0 and not np.signbit(found) and a[0] == 0.0


# ---- scatter -----------------------------------------------------------------

@pytest.mark.parametrize("dtype", list(TYPES))
@pytest.mark.parametrize("code", list(OPS))
def test_scatter_duplicates_all_land(dtype, code):
    rng = np.random.default_rng(0)
    index = rng.integers(0, 10, size=10_000).astype(np.int64)
    values = rng.integers(0, 100, size=10_000).astype(dtype)
    base = np.full(10, 50, dtype=dtype)
    expected = base.copy()
    OPS[code].at(expected, index, values)
    previous = np.empty_like(values)
    rc = lib.pshm_scatter(code, TYPES[dtype][2], ffi.from_buffer(base),
                          ptr(index), ffi.from_buffer(values),
                          ffi.from_buffer(previous), len(index))
    assert rc == 0
    np.testing.assert_array_equal(base, expected)
    replay = np.full(10, 50, dtype=dtype)          # previous = value before each update
    for i, (j, v) in enumerate(zip(index, values)):
        assert previous[i] == replay[j]
        replay[j] = OPS[code](replay[j], v)
    base[:] = 50                                   # previous may be NULL
    assert lib.pshm_scatter(code, TYPES[dtype][2], ffi.from_buffer(base), ptr(index),
                            ffi.from_buffer(values), ffi.NULL, len(index)) == 0
    np.testing.assert_array_equal(base, expected)


@pytest.mark.parametrize("dtype", list(TYPES))
@pytest.mark.parametrize("code", list(OPS))
def test_scatter_scalar_uses_one_value_for_every_index(dtype, code):
    rng = np.random.default_rng(1)
    index = rng.integers(0, 10, size=10_000).astype(np.int64)
    value = np.array([60], dtype=dtype)
    base = np.arange(45, 55).astype(dtype)
    expected = base.copy()
    OPS[code].at(expected, index, np.full(len(index), 60, dtype=dtype))
    previous = np.empty(len(index), dtype=dtype)
    assert lib.pshm_scatter_scalar(code, TYPES[dtype][2], ffi.from_buffer(base),
                                   ptr(index), ffi.from_buffer(value),
                                   ffi.from_buffer(previous), len(index)) == 0
    np.testing.assert_array_equal(base, expected)
    replay = np.arange(45, 55).astype(dtype)
    for i, j in enumerate(index[:200]):
        assert previous[i] == replay[j]
        replay[j] = OPS[code](replay[j], value[0])
    ffi.errno = 0
    assert lib.pshm_scatter_scalar(99, lib.PSHM_INT64, ffi.NULL, ffi.NULL, ffi.NULL,
                                   ffi.NULL, 0) == -1 and ffi.errno == errno.EINVAL


@pytest.mark.parametrize("dtype", list(TYPES))
def test_scatter_cas(dtype):
    base = np.zeros(3, dtype=dtype)
    index = np.array([0, 0, 1, 2], dtype=np.int64)
    expected = np.array([0, 0, 5, 0], dtype=dtype)
    desired = np.array([1, 2, 7, 3], dtype=dtype)
    found = np.full(4, 99, dtype=dtype)
    code = TYPES[dtype][2]
    for out in (ffi.from_buffer(found), ffi.NULL):          # found may be NULL
        assert lib.pshm_scatter_cas(code, ffi.from_buffer(base), ptr(index),
                                    ffi.from_buffer(expected), ffi.from_buffer(desired),
                                    out, 4) == 0
        np.testing.assert_array_equal(base, [1, 0, 3])
    np.testing.assert_array_equal(found, [0, 1, 0, 0])


def test_bad_op_or_dtype_is_einval_and_lock_free_is_reported():
    nul = ffi.NULL
    for call in [lambda: lib.pshm_scatter(99, lib.PSHM_INT64, nul, nul, nul, nul, 0),
                 lambda: lib.pshm_scatter(-1, lib.PSHM_INT64, nul, nul, nul, nul, 0),
                 lambda: lib.pshm_scatter(lib.PSHM_ADD, 6, nul, nul, nul, nul, 0),
                 lambda: lib.pshm_scatter_cas(-1, nul, nul, nul, nul, nul, 0)]:
        ffi.errno = 0
        assert call() == -1 and ffi.errno == errno.EINVAL
    assert lib.pshm_lock_free() == 1


# ---- concurrency ---------------------------------------------------------------

def test_threads_scalar_fetch_add_exact():
    counts = np.zeros(1, dtype=np.int64)
    sums = np.zeros(1, dtype=np.float64)
    pc, ps = ffi.cast("int64_t *", ffi.from_buffer(counts)), ptr(sums)

    def work():
        for _ in range(N_UPDATES):
            lib.pshm_fetch_add_int64(pc, 1)
            lib.pshm_fetch_add_float64(ps, 0.5)

    run_in_two_threads(work)
    assert counts[0] == 2 * N_UPDATES and sums[0] == 0.5 * 2 * N_UPDATES


@pytest.mark.parametrize("dtype", list(TYPES))
def test_threads_scatter_exact(dtype):
    # The scatter loop runs without the GIL, so the two threads truly race.
    base = np.zeros(1, dtype=dtype)
    index = np.zeros(N_UPDATES, dtype=np.int64)
    ones = np.ones(N_UPDATES, dtype=dtype)

    def work():
        for _ in range(REPEATS):                   # long enough to overlap
            lib.pshm_scatter(lib.PSHM_ADD, TYPES[dtype][2], ffi.from_buffer(base),
                             ptr(index), ffi.from_buffer(ones), ffi.NULL, N_UPDATES)

    run_in_two_threads(work)
    assert base[0] == 2 * REPEATS * N_UPDATES


def _add_in_segment(path, barrier):
    """Run in a forked child: map the segment at `path` and count into it."""
    fd = lib.pshm_open(path.encode(), 1)
    addr = lib.pshm_map(fd, 8, 1)
    assert fd >= 0 and addr != ffi.NULL
    p = ffi.cast("int64_t *", addr)
    barrier.wait()
    for _ in range(N_UPDATES):
        lib.pshm_fetch_add_int64(p, 1)
    assert lib.pshm_unmap(addr, 8) == 0 and lib.pshm_close(fd) == 0


def test_processes_fetch_add_on_shared_segment(tmp_path):
    path = str(tmp_path / "parallel_segment")
    fd = lib.pshm_create(path.encode(), 8)
    assert fd >= 0
    addr = lib.pshm_map(fd, 8, 1)
    assert addr != ffi.NULL
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_add_in_segment, args=(path, barrier)) for _ in range(2)]
    for p in procs:
        p.start()
    join_all(procs)
    assert ffi.cast("int64_t *", addr)[0] == 2 * N_UPDATES
    assert lib.pshm_unmap(addr, 8) == 0 and lib.pshm_close(fd) == 0
    assert lib.pshm_unlink(path.encode()) == 0 and not os.path.exists(path)


# ---- segments --------------------------------------------------------------------

def test_create_is_exclusive_0600_and_sized(tmp_path):
    path = str(tmp_path / "parallel_x").encode()
    fd = lib.pshm_create(path, 4096)
    assert fd >= 0
    st = os.fstat(fd)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_size == 4096
    assert lib.pshm_create(path, 4096) == -1 and ffi.errno == errno.EEXIST
    ro = lib.pshm_open(path, 0)
    assert ro >= 0
    rw_map, ro_map = lib.pshm_map(fd, 4096, 1), lib.pshm_map(ro, 4096, 0)
    ffi.cast("char *", rw_map)[100] = b"z"
    assert ffi.cast("char *", ro_map)[100] == b"z"
    for addr in (rw_map, ro_map):
        assert lib.pshm_unmap(addr, 4096) == 0
    assert lib.pshm_close(ro) == 0
    assert lib.pshm_map(-1, 4096, 0) == ffi.NULL and ffi.errno == errno.EBADF
    assert lib.pshm_map(fd, 0, 0) == ffi.NULL and ffi.errno == errno.EINVAL
    assert lib.pshm_close(fd) == 0
    assert lib.pshm_close(fd) == -1 and ffi.errno == errno.EBADF
    assert lib.pshm_unlink(path) == 0
    assert lib.pshm_unlink(path) == -1 and ffi.errno == errno.ENOENT
    assert lib.pshm_open(path, 0) == -1 and ffi.errno == errno.ENOENT


def _create_over_fsize_limit(path, conn):
    """Run in a forked child: create a segment larger than RLIMIT_FSIZE."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    fd = lib.pshm_create(path.encode(), 16 << 20)
    conn.send((fd, ffi.errno, os.path.exists(path)))


def test_create_over_file_size_limit_fails_with_efbig(tmp_path):
    path = str(tmp_path / "parallel_big")
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_create_over_fsize_limit, args=(path, child))
    proc.start()
    join_all([proc])
    assert parent.poll(0)
    assert parent.recv() == (-1, errno.EFBIG, False)
    assert not os.path.exists(path)
