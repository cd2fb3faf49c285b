"""Process backends: crashes, exceptions that do not travel, start methods,
timeouts, pickling, thread limits, Ctrl-C, parent death, pool reuse
(issue: process backends)."""

import multiprocessing
import os
import pickle
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures.process import BrokenProcessPool

import pytest

import parallel
from parallel import (Parallel, ParallelTimeoutError, TerminatedWorkerError,
                      WorkerError, cpu_count, delayed, parallel_config,
                      wrap_non_picklable_objects)

from conftest import ROOT, parallel_paths, run_script, script_env

START_METHODS = [m for m in ("fork", "spawn", "forkserver")
                 if m in multiprocessing.get_all_start_methods()]
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
# (backend, start method): 'multiprocessing' always forks its own pool.
BACKEND_METHODS = [("loky", m) for m in START_METHODS] + \
    [("multiprocessing", None)]
CRASH_S = 10.0


def small_call(backend):
    return Parallel(n_jobs=2, backend=backend)(
        delayed(abs)(-i) for i in range(4))


# --- tasks ---------------------------------------------------------------------
def crash(i, how):
    if i == 3:
        if how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif how == "exit":
            os._exit(3)
        elif how == "segv":
            import ctypes
            ctypes.string_at(0)
    time.sleep(0.05)
    return i


class Payload:
    def __init__(self):
        self.code = 42


class FinickyError(Exception):
    def __init__(self, payload):
        super().__init__(payload.code)


def finicky(i):
    if i == 3:
        raise FinickyError(Payload())
    return i


def return_lock(i):
    return threading.Lock()


def explode_on_load():
    raise RuntimeError("cannot rebuild this argument")


class BadArg:
    def __reduce__(self):
        return explode_on_load, ()


def identity(x):
    return x


def apply(fn, x):
    return fn(x)


def slow_marker(i, path, seconds):
    time.sleep(seconds)
    with open(path + str(i), "w"):
        pass
    return i


def thread_env(_):
    time.sleep(0.05)
    return {k: os.environ.get(k) for k in THREAD_VARS}


def getpid_slowly(_):
    time.sleep(0.2)
    return os.getpid()


def record_init(path):
    with open(path, "a") as f:
        f.write("%d\n" % os.getpid())


def make_local_things():
    offset = 10

    class Point:
        def __init__(self, x):
            self.x = x

    to_point = lambda v: Point(v + offset)  # noqa: E731

    def scale(v):
        return 3 * v
    return to_point, scale, Point


# --- B01: crashed workers ---------------------------------------------------------
@pytest.mark.parametrize("how,code", [("sigkill", "SIGKILL(-9)"),
                                      ("exit", "EXIT(3)"),
                                      ("segv", "SIGSEGV(-11)")])
@pytest.mark.parametrize("backend,method", BACKEND_METHODS,
                         ids=["%s-%s" % bm for bm in BACKEND_METHODS])
def test_worker_crash_raises_terminated_worker_error(monkeypatch, backend,
                                                     method, how, code):
    if method is not None:
        monkeypatch.setenv("PARALLEL_START_METHOD", method)
    t0 = time.monotonic()
    with pytest.raises(TerminatedWorkerError) as info:
        Parallel(n_jobs=2, backend=backend, batch_size=1)(
            delayed(crash)(i, how) for i in range(8))
    assert time.monotonic() - t0 < CRASH_S
    assert isinstance(info.value, BrokenProcessPool)
    assert code in str(info.value), str(info.value)
    assert small_call(backend) == [0, 1, 2, 3]


# --- B02 and friends: things that do not cross the boundary ----------------------
@pytest.mark.parametrize("backend,method", BACKEND_METHODS,
                         ids=["%s-%s" % bm for bm in BACKEND_METHODS])
def test_unpicklable_exception_b02(monkeypatch, backend, method):
    if method is not None:
        monkeypatch.setenv("PARALLEL_START_METHOD", method)
    t0 = time.monotonic()
    with pytest.raises((WorkerError, FinickyError)) as info:
        Parallel(n_jobs=2, backend=backend)(
            delayed(finicky)(i) for i in range(8))
    assert time.monotonic() - t0 < CRASH_S
    e = info.value
    text = str(e) + getattr(e, "type_name", "") + getattr(e, "message", "")
    assert "FinickyError" in text or isinstance(e, FinickyError)
    assert "42" in text or "42" in str(e.args)
    assert small_call(backend) == [0, 1, 2, 3]


@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_unpicklable_result_names_task(backend):
    with pytest.raises(WorkerError) as info:
        Parallel(n_jobs=2, backend=backend)(
            delayed(return_lock)(i) for i in range(2))
    message = str(info.value)
    assert "return_lock" in message
    assert "lock" in message.replace("return_lock", "")
    assert isinstance(info.value, TypeError)   # as joblib's (loky) error
    assert small_call(backend) == [0, 1, 2, 3]


@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_argument_unpickling_fails_in_worker(backend):
    t0 = time.monotonic()
    with pytest.raises(Exception) as info:
        Parallel(n_jobs=2, backend=backend)(
            delayed(identity)(BadArg()) for _ in range(2))
    assert time.monotonic() - t0 < CRASH_S
    text = str(info.value) + str(getattr(info.value, "__cause__", ""))
    assert "unpickl" in text or "cannot rebuild this argument" in text, text
    assert small_call(backend) == [0, 1, 2, 3]


def test_unpicklable_task_fails_in_caller_naming_it():
    lock = threading.Lock()
    ran = []
    with pytest.raises(pickle.PicklingError) as info:
        Parallel(n_jobs=2, backend="loky")(
            [delayed(apply)(lambda v: (lock, v), 1)])
    assert "apply" in str(info.value)
    assert not ran
    assert small_call("loky") == [0, 1, 2, 3]


class UnprintableRecord:
    def __repr__(self):
        raise RuntimeError("session closed")   # a lazy ORM object, say


class UnprintableError(Exception):
    def __str__(self):
        raise ValueError("no str")


def raise_unprintable(i, kind):
    if i == 1:
        raise KeyError(UnprintableRecord()) if kind == "holder" else \
            UnprintableError("x")
    return i


@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
@pytest.mark.parametrize("kind", ["holder", "self"])
def test_exception_whose_str_fails_keeps_its_type(backend, kind):
    # joblib#270: the worker used to die describing it (a misleading
    # TerminatedWorkerError).
    expected = KeyError if kind == "holder" else UnprintableError
    with pytest.raises(expected):
        Parallel(n_jobs=2, backend=backend)(
            delayed(raise_unprintable)(i, kind) for i in range(4))
    assert small_call(backend) == [0, 1, 2, 3]


def test_modules_travel_as_arguments_and_results():
    # joblib#656: by name, as cloudpickle sends them.
    import json
    import math
    assert Parallel(n_jobs=2)(delayed(getattr)(math, "pi")
                              for _ in range(2)) == [math.pi] * 2
    assert Parallel(n_jobs=2)(delayed(getattr)({"xp": math}["xp"], "e")
                              for _ in range(2)) == [math.e] * 2
    assert Parallel(n_jobs=2)(delayed(__import__)("json")
                              for _ in range(2)) == [json, json]


# --- B05: no main guard, stdin scripts ---------------------------------------------------
B05_SCRIPT = """\
# deliberately no main guard
import multiprocessing, os, sys
from parallel import Parallel, delayed

method, backend = sys.argv[1], sys.argv[2]
multiprocessing.set_start_method(method, force=True)
print("module body executed in pid", os.getpid(), flush=True)
print("RESULT", backend, method,
      Parallel(n_jobs=2, backend=backend)(delayed(abs)(-i) for i in range(4)),
      flush=True)
"""


@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
@pytest.mark.parametrize("method", [m for m in ("spawn", "forkserver")
                                    if m in START_METHODS])
def test_script_without_main_guard_b05(tmp_path, method, backend):
    path = tmp_path / "job.py"
    path.write_text(B05_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(path), method, backend], cwd=str(tmp_path),
        env=script_env({"PARALLEL_START_METHOD": method}),
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("module body executed") == 1, proc.stdout
    assert proc.stdout.count("RESULT %s %s [0, 1, 2, 3]"
                             % (backend, method)) == 1, proc.stdout


@pytest.mark.parametrize("method", [m for m in ("spawn", "forkserver")
                                    if m in START_METHODS])
def test_script_on_stdin(tmp_path, method):
    path = tmp_path / "job.py"
    path.write_text(B05_SCRIPT.replace("sys.argv[1], sys.argv[2]",
                                       "%r, 'loky'" % method))
    with open(path) as stdin:
        proc = subprocess.run(
            [sys.executable, "-"], stdin=stdin, cwd=str(tmp_path),
            env=script_env({"PARALLEL_START_METHOD": method}),
            capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("module body executed") == 1, proc.stdout
    assert "RESULT loky %s [0, 1, 2, 3]" % method in proc.stdout


# --- B09: timeout on processes -------------------------------------------------------------
@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_process_timeout_kills_overdue_tasks(tmp_path, backend):
    marker = str(tmp_path / "finished")
    deadline = 1.0
    t0 = time.monotonic()
    with pytest.raises(ParallelTimeoutError) as info:
        Parallel(n_jobs=2, backend=backend, timeout=deadline)(
            delayed(slow_marker)(i, marker, 3.0) for i in range(2))
    elapsed = time.monotonic() - t0
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, multiprocessing.TimeoutError)
    assert elapsed < deadline + 2.0, elapsed
    time.sleep(3.5 - elapsed)
    assert not any(os.path.exists(marker + str(i)) for i in range(2))
    assert small_call(backend) == [0, 1, 2, 3]


# --- B17: lambdas, closures, local classes -----------------------------------------------------
@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_lambdas_closures_local_classes_b17(backend):
    to_point, scale, Point = make_local_things()
    out = Parallel(n_jobs=2, backend=backend)(
        delayed(to_point)(i) for i in range(3))
    assert all(isinstance(o, Point) for o in out)
    assert [o.x for o in out] == [10, 11, 12]
    out = Parallel(n_jobs=2, backend=backend)(
        delayed(apply)(scale, i) for i in range(3))
    assert out == [0, 3, 6]
    out = Parallel(n_jobs=2, backend=backend)(
        delayed(lambda v: v + 1)(i) for i in range(3))
    assert out == [1, 2, 3]


def test_loky_pickler_pickle_refuses_lambdas(monkeypatch):
    monkeypatch.setenv("LOKY_PICKLER", "pickle")
    with pytest.raises(pickle.PicklingError):
        Parallel(n_jobs=2, backend="loky")(
            delayed(lambda v: v + 1)(i) for i in range(2))
    wrapped = wrap_non_picklable_objects(lambda v: v + 1)
    assert Parallel(n_jobs=2, backend="loky")(
        delayed(wrapped)(i) for i in range(3)) == [1, 2, 3]


def test_multiprocessing_disabled_falls_back_to_threads(monkeypatch):
    monkeypatch.setenv("PARALLEL_MULTIPROCESSING", "0")
    with pytest.warns(UserWarning, match="thread"):
        out = Parallel(n_jobs=2, backend="loky")(
            delayed(os.getpid)() for _ in range(3))
    assert out == [os.getpid()] * 3


# --- B19: thread limits ----------------------------------------------------------------------------
@pytest.fixture
def clean_thread_env(monkeypatch):
    for name in THREAD_VARS + ("BLIS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_thread_limits_in_workers(clean_thread_env, backend):
    expected = str(max(cpu_count() // 2, 1))
    for env in Parallel(n_jobs=2, backend=backend)(
            delayed(thread_env)(i) for i in range(2)):
        assert env == {k: expected for k in THREAD_VARS}
    assert not any(k in os.environ for k in THREAD_VARS)


@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_inner_max_num_threads(clean_thread_env, backend):
    for env in Parallel(n_jobs=2, backend=backend, inner_max_num_threads=3)(
            delayed(thread_env)(i) for i in range(2)):
        assert env == {k: "3" for k in THREAD_VARS}
    with parallel_config(backend=backend, inner_max_num_threads=4):
        for env in Parallel(n_jobs=2)(
                delayed(thread_env)(i) for i in range(2)):
            assert env == {k: "4" for k in THREAD_VARS}
    assert not any(k in os.environ for k in THREAD_VARS)


def test_parent_thread_env_wins(clean_thread_env, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    expected = str(max(cpu_count() // 2, 1))
    for env in Parallel(n_jobs=2, backend="loky")(
            delayed(thread_env)(i) for i in range(2)):
        assert env["OMP_NUM_THREADS"] == "7"
        assert env["MKL_NUM_THREADS"] == expected
    assert os.environ["OMP_NUM_THREADS"] == "7"
    assert "MKL_NUM_THREADS" not in os.environ


def test_inner_max_num_threads_with_threading_rejected():
    with pytest.raises(ValueError, match="inner_max_num_threads"):
        Parallel(n_jobs=2, backend="threading", inner_max_num_threads=2)
    with pytest.raises(ValueError, match="inner_max_num_threads"):
        parallel_config("threading", inner_max_num_threads=2)


# --- pool reuse and initializer ------------------------------------------------------------------------
def test_pool_reused_across_calls():
    first = Parallel(n_jobs=2, backend="loky", batch_size=1)(
        delayed(getpid_slowly)(i) for i in range(4))
    second = Parallel(n_jobs=2, backend="loky", batch_size=1)(
        delayed(getpid_slowly)(i) for i in range(4))
    assert len(set(first)) == 2 and os.getpid() not in first
    assert set(first) == set(second)


def test_with_block_keeps_workers():
    # 8 tasks of 0.2 s: a worker slow to start on a loaded machine still
    # gets some of them
    with Parallel(n_jobs=2, backend="loky", batch_size=1) as p:
        first = p(delayed(getpid_slowly)(i) for i in range(8))
        second = p(delayed(getpid_slowly)(i) for i in range(8))
    assert len(set(first)) == 2
    assert set(first) == set(second)


def test_initializer_runs_once_per_worker(tmp_path):
    log = str(tmp_path / "init.log")
    with Parallel(n_jobs=2, backend="loky", batch_size=1,
                  initializer=record_init, initargs=(log,)) as p:
        pids = p(delayed(getpid_slowly)(i) for i in range(4))
        pids += p(delayed(getpid_slowly)(i) for i in range(4))
    with open(log) as f:
        inits = [int(line) for line in f]
    assert sorted(inits) == sorted(set(inits))
    assert set(pids) <= set(inits)


# An initializer that sets a variable, and a task that reads it.
INIT_AND_READ = r"""
import os
from parallel import Parallel, delayed, parallel_config
def init(value):
    os.environ["FROM_INIT"] = str(value)
def read(_):
    return os.environ.get("FROM_INIT")
"""

INITIALIZER_SCRIPT = INIT_AND_READ + r"""
if __name__ == "__main__":
    for backend in ("loky", "multiprocessing"):
        print(Parallel(n_jobs=2, backend=backend, initializer=init,
                       initargs=(7,))(delayed(read)(i) for i in range(2)))
        print(Parallel(n_jobs=2, backend=backend, initializer=lambda: init(8))(
            delayed(read)(i) for i in range(2)))
"""


CONFIG_INITIALIZER_SCRIPT = INIT_AND_READ + r"""
if __name__ == "__main__":
    for backend in ("loky", "multiprocessing"):
        with parallel_config(backend, initializer=init, initargs=(5,)):
            print(Parallel(n_jobs=2)(delayed(read)(i) for i in range(2)))
    try:
        with parallel_config("loky", no_such_option=1):
            Parallel(n_jobs=2)(delayed(read)(i) for i in range(2))
    except ValueError as e:
        print(e)
"""


def test_pool_keywords_given_to_parallel_config_reach_the_pool():
    """As joblib: backend keywords of parallel_config (initializer, ...)
    configure the pool, and unknown ones are refused."""
    done = subprocess.run([sys.executable, "-c", CONFIG_INITIALIZER_SCRIPT],
                          cwd=ROOT, env=script_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    assert lines[:2] == ["['5', '5']"] * 2, done.stdout
    assert "unknown keyword" in lines[2] and "no_such_option" in lines[2]


def test_initializer_from_main_or_a_lambda_works_on_every_process_backend():
    done = subprocess.run([sys.executable, "-c", INITIALIZER_SCRIPT],
                          cwd=ROOT, env=script_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:4] == ["['7', '7']", "['8', '8']"] * 2


ATEXIT_SCRIPT = r"""
import atexit, logging, os, sys, weakref
from parallel import Parallel, delayed
OUT = sys.argv[1]
def mark(name):
    open(os.path.join(OUT, name), "w").close()
def task(i):
    atexit.register(mark, "task_%d" % os.getpid())
    handler = logging.FileHandler(os.path.join(OUT, "log_%d" % os.getpid()))
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger("t").addHandler(handler)
    logging.getLogger("t").warning("task %d", i)
    return os.getpid()
class Kept:
    pass
KEPT = []
def finalized(i):
    KEPT.append(Kept())
    weakref.finalize(KEPT[-1], mark, "finalize_%d" % os.getpid())
    return os.getpid()
if __name__ == "__main__":
    import tempfile, weakref
    atexit.register(mark, "caller")
    for backend in ("loky", "multiprocessing"):
        print(len(set(Parallel(n_jobs=2, backend=backend, batch_size=1)(
            delayed(task)(i) for i in range(4)))))
    # a forked worker must not run the caller's finalizers (this folder's
    # removal), and runs its own
    mine = tempfile.TemporaryDirectory()
    with Parallel(n_jobs=2, backend="multiprocessing", batch_size=1) as p:
        print(len(set(p(delayed(finalized)(i) for i in range(4)))))
    print(os.path.isdir(mine.name))
"""


@pytest.mark.timeout(120)
def test_workers_run_their_atexit_handlers_at_exit(tmp_path):
    # joblib#1377: handlers registered in a worker run when it stops, as
    # loky's; the caller's own run once, in the caller (a forked worker
    # inherits them and must not run them).
    done = subprocess.run([sys.executable, "-c", ATEXIT_SCRIPT,
                           str(tmp_path)], cwd=ROOT, env=script_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    counts = done.stdout.split()
    assert counts[-1] == "True"    # the caller's folder is still there
    n_workers = sum(map(int, counts[:2]))
    names = os.listdir(tmp_path)
    assert names.count("caller") == 1
    assert len([n for n in names if n.startswith("task_")]) == n_workers
    assert len([n for n in names if n.startswith("finalize_")]) == \
        int(counts[2])
    logs = [n for n in names if n.startswith("log_")]
    assert len(logs) == n_workers
    assert all(open(os.path.join(tmp_path, n)).read().startswith("task ")
               for n in logs)


MAIN_GLOBALS_SCRIPT = r"""
from parallel import Parallel, delayed
STATE = None
def init(k):
    global STATE
    STATE = k
def get(_):
    return STATE
if __name__ == "__main__":
    print(Parallel(n_jobs=2, backend="multiprocessing", initializer=init,
                   initargs=(7,))(delayed(get)(i) for i in range(4)))
    with Parallel(n_jobs=2, backend="multiprocessing") as p:
        print(p(delayed(get)(i) for i in range(2)))
        def later(x):
            return 2 * x
        print(p(delayed(later)(i) for i in range(2)))
"""


def test_multiprocessing_initializer_sets_main_globals_that_tasks_see():
    """As joblib's 'multiprocessing': workers forked for the call share
    __main__'s globals with the initializer; a function defined after the
    fork still works (it travels by value)."""
    done = subprocess.run([sys.executable, "-c", MAIN_GLOBALS_SCRIPT],
                          cwd=ROOT, env=script_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["[7, 7, 7, 7]", "[None, None]",
                                           "[0, 2]"]


def _failing_initializer():
    raise RuntimeError("no licence server")


@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_failing_initializer_is_named_and_the_pool_recovers(backend):
    with pytest.raises(WorkerError, match="initializer _failing_initializer "
                       "failed.*RuntimeError: no licence server") as info:
        Parallel(n_jobs=2, backend=backend, initializer=_failing_initializer)(
            delayed(abs)(i) for i in range(4))
    assert "no licence server" in info.value.remote_traceback
    assert Parallel(n_jobs=2, backend=backend)(
        delayed(abs)(-i) for i in range(3)) == [0, 1, 2]


@pytest.mark.parametrize("kwargs, match", [
    (dict(initializer=3), "initializer must be a callable"),
    (dict(initializer=abs, initargs=5), "initargs must be a tuple"),
    (dict(idle_worker_timeout="x"), "idle_worker_timeout must be"),
    (dict(idle_worker_timeout=0), "idle_worker_timeout must be"),
    (dict(backend="multiprocessing", maxtasksperchild=0), "maxtasksperchild"),
    (dict(backend="loky", maxtasksperchild=1), "unknown keyword.*maxtasksper"),
])
def test_pool_options_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Parallel(n_jobs=2, **kwargs)(delayed(abs)(i) for i in range(2))


def test_maxtasksperchild_replaces_workers_as_multiprocessing_pool():
    pids = Parallel(n_jobs=2, backend="multiprocessing", maxtasksperchild=1,
                    batch_size=1)(delayed(getpid_slowly)(i) for i in range(6))
    assert len(set(pids)) == 6
    pids = Parallel(n_jobs=2, backend="multiprocessing", maxtasksperchild=3,
                    batch_size=1)(delayed(getpid_slowly)(i) for i in range(6))
    assert 2 <= len(set(pids)) <= 4


# --- helpers for scripts that are signalled ----------------------------------------------------------------
def start_script(code, tmp_path):
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(code))
    proc = subprocess.Popen(
        [sys.executable, str(path)], cwd=str(tmp_path), env=script_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    lines = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)
    threading.Thread(target=pump, daemon=True).start()
    return proc, lines


def wait_for_line(lines, prefix, timeout, seen):
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail("no %r line within %ss; got %r" % (prefix, timeout,
                                                            seen))
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            continue
        if line is None:
            pytest.fail("script ended before %r; got %r" % (prefix, seen))
        seen.append(line)
        if line.startswith(prefix):
            return line


def pid_alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def finish(proc, timeout=30):
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


# --- B23: Ctrl-C ---------------------------------------------------------------------------------------------
B23_SCRIPT = """
import os, sys, time
import numpy as np
from parallel import Parallel, delayed

def crunch(x, i):
    if i < 2:
        print("STARTED", flush=True)
    time.sleep(2)
    return float(x[i])

big = np.ones(1_000_000)            # 8 MB -> memmapped
print("PID", os.getpid(), flush=True)
try:
    Parallel(n_jobs=2)(delayed(crunch)(big, i) for i in range(20))
    print("NO INTERRUPT", flush=True)
except KeyboardInterrupt:
    print("INTERRUPTED_AT %r" % time.time(), flush=True)
print("NEXT", Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(4)),
      flush=True)
"""


def test_ctrl_c_b23(tmp_path):
    before = parallel_paths()
    proc, lines = start_script(B23_SCRIPT, tmp_path)
    seen = []
    try:
        wait_for_line(lines, "STARTED", 60, seen)
        time.sleep(0.2)
        sent_at = time.time()
        os.killpg(proc.pid, signal.SIGINT)
        line = wait_for_line(lines, "INTERRUPTED_AT", 10, seen)
        latency = float(line.split()[1]) - sent_at
        assert latency < 1.5, latency
        line = wait_for_line(lines, "NEXT", 60, seen)
        assert line.strip() == "NEXT [0, 1, 2, 3]"
        assert finish(proc) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    stderr = proc.stderr.read()
    assert "Traceback" not in stderr, stderr
    assert "leak" not in stderr.lower(), stderr
    deadline = time.monotonic() + 3
    while parallel_paths() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not parallel_paths() - before


# --- B11: the parent is SIGKILLed ------------------------------------------------------------------------------
B11_SCRIPT = """
import os, time
import numpy as np
from parallel import Parallel, delayed

def pid_slowly(_):
    time.sleep(0.3)
    return os.getpid()

def slow_sum(x):
    # one write() per line: two workers share this stdout pipe
    os.write(1, ("RUNNING %d\\n" % os.getpid()).encode())
    time.sleep(20)
    return float(x.sum())

pids = Parallel(n_jobs=2, batch_size=1)(delayed(pid_slowly)(i) for i in range(4))
print("WORKERS", *sorted(set(pids)), flush=True)
big = np.ones(2_000_000)          # 16 MB -> memmapped
Parallel(n_jobs=2)(delayed(slow_sum)(big) for _ in range(2))
"""


def test_parent_sigkill_cleans_up_b11(tmp_path):
    proc, lines = start_script(B11_SCRIPT, tmp_path)
    seen = []
    try:
        workers = [int(p) for p in
                   wait_for_line(lines, "WORKERS", 60, seen).split()[1:]]
        running = {int(wait_for_line(lines, "RUNNING", 30, seen).split()[1]),
                   int(wait_for_line(lines, "RUNNING", 30, seen).split()[1])}
        prefix = "parallel_%d_" % proc.pid
        mine = [p for p in parallel_paths()
                if os.path.basename(p).startswith(prefix)]
        assert mine, "the call folder should exist while the call runs"
        all_pids = set(workers) | running
        assert all(pid_alive(p) for p in all_pids)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            alive = [p for p in all_pids if pid_alive(p)]
            left = [p for p in parallel_paths()
                    if os.path.basename(p).startswith(prefix)]
            if not alive and not left:
                break
            time.sleep(0.1)
        assert not alive, "orphan workers alive 10 s after kill -9: %s" % alive
        assert not left, "segments left 10 s after kill -9: %s" % left
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


EXIT_SCRIPT = r"""
import faulthandler, time
from parallel import Parallel, delayed
faulthandler.dump_traceback_later(45, exit=True)   # where a hang is, if any
# pools left open on purpose: a managed block never exited, a generator
# never consumed, and calls on several start methods
p = Parallel(n_jobs=2, backend="multiprocessing").__enter__()
p(delayed(abs)(-i) for i in range(4))
gen = Parallel(n_jobs=2, return_as="generator")(delayed(time.sleep)(0.01)
                                                for _ in range(50))
next(gen)
print(Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(4)), flush=True)
"""


@pytest.mark.parametrize("method", START_METHODS)
def test_interpreter_exits_promptly_with_pools_open(method):
    """No worker keeps the caller from exiting (multiprocessing's exit
    handler joins child processes: every pool must be stopped first)."""
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-c", EXIT_SCRIPT], cwd=ROOT,
                          env=script_env({"PARALLEL_START_METHOD": method}),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "[0, 1, 2, 3]" in done.stdout
    # The generator dropped at exit says nothing (it used to print an
    # ignored ImportError from its cleanup during interpreter shutdown).
    assert done.stderr == ""
    assert time.monotonic() - t0 < 15


MIXED_SCRIPT = r"""
import sys
from parallel import Parallel, delayed
def scale(x, factor=1):
    return x * factor
tasks = [delayed(scale)(i) for i in range(5)] + \
        [delayed(scale)(i, factor=10) for i in range(5)] + \
        [delayed(abs)(-3), (divmod, (7, 2), {})]
print(Parallel(n_jobs=2, batch_size=4)(tasks))
print(Parallel(n_jobs=2)(delayed(len)(s) for s in ["ab", "abc"]))
print("cloudpickle imported by the caller:", "cloudpickle" in sys.modules)
"""


def test_batches_with_mixed_functions_and_keywords():
    """Batches mixing functions, keyword arguments and hand-made triples give
    the same results; functions importable by name never need cloudpickle,
    while __main__ functions travel by value."""
    done = subprocess.run([sys.executable, "-c", MIXED_SCRIPT], cwd=ROOT,
                          env=script_env(), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == str([0, 1, 2, 3, 4, 0, 10, 20, 30, 40, 3, (3, 1)])
    assert lines[1] == "[2, 3]"
    # scale is defined in __main__, so cloudpickle was needed for it
    assert lines[2].endswith("True")


def test_importable_functions_do_not_need_cloudpickle():
    code = ("import sys\nfrom parallel import Parallel, delayed\n"
            "import operator\n"
            "print(Parallel(n_jobs=2)(delayed(operator.add)(i, 1) "
            "for i in range(3)))\n"
            "print('cloudpickle' in sys.modules)\n")
    done = run_script(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[1,", "2,", "3]", "False"]


def _lock_at_seven(i):
    return threading.Lock() if i == 7 else i


def test_unpicklable_result_names_the_right_task():
    with pytest.raises(WorkerError, match="task 7"):
        Parallel(n_jobs=2, batch_size=4)(
            delayed(_lock_at_seven)(i) for i in range(10))


def test_items_that_are_not_delayed_calls_get_a_clear_error():
    def square(x):
        return x * x
    with pytest.raises(TypeError, match="delayed"):
        Parallel(n_jobs=2)([square, square])



def _add(a, b=0):
    return a + b


class _EqualToEverything:
    """A callable that compares equal to any object: batches must group
    tasks by the identity of their function, never by ==."""

    def __init__(self, k):
        self.k = k

    def __call__(self, x):
        return self.k * 1000 + x

    def __eq__(self, other):
        return True

    __hash__ = object.__hash__


def _mixed_tasks(n):
    """Runs of one function, switching function and keywords across the
    boundaries of the 256-task reads, with hand-made triples and lists."""
    ones = [_EqualToEverything(k) for k in range(3)]
    for i in range(n):
        if i % 700 < 500:
            yield delayed(abs)(-i)
        elif i % 700 < 600:
            yield delayed(_add)(i, b=1)
        elif i % 700 < 650:
            yield (ones[i % 3], (i,), {})
        elif i % 2:
            yield (divmod, (i, 7), {})
        else:
            yield [divmod, [i, 7], {}]      # joblib accepts lists too


def _mixed_expected(n):
    out = []
    for i in range(n):
        if i % 700 < 500:
            out.append(i)
        elif i % 700 < 600:
            out.append(i + 1)
        elif i % 700 < 650:
            out.append((i % 3) * 1000 + i)
        else:
            out.append(divmod(i, 7))
    return out


@pytest.mark.parametrize("backend", ["loky", "threading", "sequential"])
@pytest.mark.parametrize("known_length", [False, True])
def test_long_mixed_inputs_give_every_result_in_order(backend, known_length):
    n = 5000
    tasks = _mixed_tasks(n)
    if known_length:
        tasks = list(tasks)
    for batch_size in ("auto", 300):
        out = Parallel(n_jobs=2, backend=backend, batch_size=batch_size)(tasks)
        assert out == _mixed_expected(n)
        tasks = _mixed_tasks(n) if not known_length else tasks


@pytest.mark.parametrize("bad", [
    "not a triple", (abs, (1,), {}, "extra"), (abs, (1,)), 42,
    ("abs", (1,), {})])
@pytest.mark.parametrize("at", [0, 255, 256, 1000])
def test_a_bad_task_anywhere_names_its_index(bad, at):
    def tasks():
        for i in range(1500):
            yield bad if i == at else delayed(abs)(i)
    with pytest.raises(TypeError, match="task %d is" % at):
        Parallel(n_jobs=2)(tasks())


@pytest.mark.parametrize("backend", ["loky", "threading", "sequential"])
@pytest.mark.parametrize("batch_size", [1, 2])
@pytest.mark.parametrize("task, message", [
    ((_add, 5, {}), "after \\* must be an iterable"),
    ((_add, (1,), None), "after \\*\\* must be a mapping"),
])
def test_malformed_task_raises_joblibs_type_error(backend, batch_size, task,
                                                  message):
    """A triple whose arguments are not a tuple or whose keywords are not a
    mapping fails as the call would (as joblib), whatever the batching; the
    worker survives."""
    with pytest.raises(TypeError, match=message):
        Parallel(n_jobs=2, batch_size=batch_size, backend=backend)(
            [task, (len, ([1],), {})])
    assert Parallel(n_jobs=2, backend=backend)(
        delayed(abs)(-i) for i in range(3)) == [0, 1, 2]


def test_caller_drops_tasks_once_they_are_sent():
    """Tasks sent to process workers are not kept by the caller, so a long
    generator's arguments do not pile up in the caller's memory."""
    import weakref
    alive = weakref.WeakSet()
    peak = [0]

    class Payload(bytearray):
        __hash__ = object.__hash__

    def tasks():
        for i in range(3000):
            data = Payload(1000)
            alive.add(data)
            peak[0] = max(peak[0], len(alive))
            yield delayed(len)(data)
    out = Parallel(n_jobs=2, batch_size=50, pre_dispatch="16 * n_jobs")(
        tasks())
    assert out == [1000] * 3000
    # at most the 256-task read in progress plus what waits for dispatch
    assert peak[0] <= 256 + 50 * 2 + 1


NESTED_FORK_SCRIPT = r"""
from parallel import Parallel, delayed
def inner(x):
    return sum(Parallel(n_jobs=2, backend="loky")(
        delayed(abs)(i) for i in range(4))) + x
print(Parallel(n_jobs=2, backend="multiprocessing")(
    delayed(inner)(i) for i in range(2)))
print(Parallel(n_jobs=2)(delayed(inner)(i) for i in range(2)))
"""

OVERLAPPING_FIRST_CALLS_SCRIPT = r"""
import os, threading
from parallel import Parallel, delayed
errors = []
def run(backend):
    try:
        Parallel(n_jobs=2, backend=backend)(delayed(abs)(i) for i in range(10))
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=run, args=(b,), daemon=True)
           for b in ("multiprocessing", "loky", "multiprocessing", "loky")]
for t in threads: t.start()
for t in threads: t.join(30)
print("hung threads:", sum(t.is_alive() for t in threads), flush=True)
print("errors:", errors, flush=True)
if any(t.is_alive() for t in threads):      # say where, for the report
    import faulthandler, sys
    faulthandler.dump_traceback(file=sys.stdout, all_threads=True)
    os.system("ps -o pid,ppid,stat,wchan:24,args --ppid %d" % os.getpid())
os._exit(0)
"""


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_nested_process_calls_in_forked_workers(method):
    """A process-backend call inside a task of a fork-started worker (the
    child must not inherit the parent's held locks or pools, nor the
    parent's fork server once the parent has used one)."""
    script = NESTED_FORK_SCRIPT.replace(
        "def inner", "print(Parallel(n_jobs=2)(delayed(abs)(i) for i in "
        "range(2)))\ndef inner")
    done = subprocess.run([sys.executable, "-c", script],
                          cwd=ROOT, env=script_env(
                              {"PARALLEL_START_METHOD": method}),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["[0, 1]", "[6, 7]", "[6, 7]"], \
        done.stdout


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_threads_starting_pools_at_once(method):
    """First calls from several threads at once: a worker forked while
    another thread starts the tracker must not hang either."""
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", OVERLAPPING_FIRST_CALLS_SCRIPT], cwd=ROOT,
            env=script_env({"PARALLEL_START_METHOD": method}),
            capture_output=True, text=True, timeout=90)
        assert "hung threads: 0" in done.stdout, done.stdout + done.stderr
        # (multiprocessing, imported by another thread at that moment, was
        # half imported: AttributeError current_process)
        assert "errors: []" in done.stdout, done.stdout + done.stderr


def test_a_stopped_pool_never_writes_to_a_reused_descriptor():
    """The cause of a rare hang of first calls from several threads: a pool
    woke its finished manager through a closed pipe whose descriptor
    another thread had just reused (a new worker's pipe got a stray
    byte)."""
    pool = parallel._Pool("fork", {})
    pool.shutdown()
    pool.thread.join(10)
    assert not pool.thread.is_alive()
    r, w = os.pipe()             # reuses the freed descriptor numbers
    try:
        os.set_blocking(r, False)
        pool._wake()
        with pytest.raises(BlockingIOError):
            os.read(r, 1)
    finally:
        os.close(r)
        os.close(w)


SLOW_IMPORT_SCRIPT = r"""
import os, sys, threading, time
from parallel import Parallel, delayed
flag = sys.argv[1]
def use(_):
    import slowmod           # the child's first import of that module
    return slowmod.VALUE
if __name__ == "__main__":
    importer = threading.Thread(target=__import__, args=("slowmod",))
    importer.start()          # holds slowmod's import lock until the flag
    time.sleep(0.3)
    threading.Timer(1.0, lambda: open(flag, "w").close()).start()
    try:
        print(Parallel(n_jobs=2, backend="multiprocessing", timeout=15)(
            delayed(use)(i) for i in range(2)))
    except Exception as e:
        print(type(e).__name__, e)
    importer.join()
"""


def test_fork_waits_for_other_threads_imports(tmp_path):
    """A worker forked while another thread is importing a module would
    inherit that module's import lock held and hang on its own import of
    it: the fork waits until the import is done."""
    flag = tmp_path / "go"
    (tmp_path / "slowmod.py").write_text(
        "import os, time\nwhile not os.path.exists(%r):\n"
        "    time.sleep(0.01)\nVALUE = 42\n" % str(flag))
    done = subprocess.run(
        [sys.executable, "-c", SLOW_IMPORT_SCRIPT, str(flag)], cwd=ROOT,
        env=script_env(pythonpath=os.pathsep.join([str(tmp_path), ROOT])),
        capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[42, 42]", done.stdout + done.stderr


def test_nested_with_block_of_one_instance_is_refused():
    p = Parallel(n_jobs=2)
    with p:
        with pytest.raises(RuntimeError, match="already in a with block"):
            with p:
                pass
        assert p(delayed(abs)(-i) for i in range(3)) == [0, 1, 2]
    assert p._managed is None


def _sleep_return(i, seconds=0.1):
    time.sleep(seconds)
    return i


@pytest.mark.parametrize("backend, return_as", [
    ("loky", "generator"), ("threading", "generator_unordered"),
    ("multiprocessing", "generator")])
def test_timeout_does_not_count_results_waiting_for_a_slow_consumer(
        backend, return_as):
    """The timeout counts while a task runs, not while its finished result
    waits for the consumer (nor for a slow progress callback)."""
    out = []
    for x in Parallel(n_jobs=2, timeout=0.5, return_as=return_as,
                      backend=backend)(
            delayed(_sleep_return)(i) for i in range(4)):
        time.sleep(0.7)
        out.append(x)
    assert sorted(out) == list(range(4))
    assert Parallel(n_jobs=2, timeout=0.5, batch_size=1, backend=backend,
                    progress=lambda done, total: time.sleep(0.3))(
        delayed(_sleep_return)(i) for i in range(4)) == list(range(4))


def test_timeout_names_the_overdue_task():
    with pytest.raises(ParallelTimeoutError, match="task 2 "):
        Parallel(n_jobs=2, timeout=0.5, batch_size=10)(
            delayed(time.sleep)(3 if i == 2 else 0) for i in range(10))


LATER_PATH_SCRIPT = r"""
import os, sys
from parallel import Parallel, delayed
print(Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(2)))   # pool up
sys.path.insert(0, sys.argv[1])
import latermod
print(Parallel(n_jobs=2)(delayed(latermod.f)(i) for i in range(4)))
"""


def test_sys_path_changed_after_workers_started(tmp_path):
    # The module is importable only through the new sys.path entry.
    (tmp_path / "latermod.py").write_text("def f(x):\n    return 10 * x\n")
    done = subprocess.run([sys.executable, "-c", LATER_PATH_SCRIPT,
                           str(tmp_path)], cwd=ROOT, env=script_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.split("\n")[:2] == ["[0, 1]", "[0, 10, 20, 30]"], \
        done.stdout + done.stderr


IMPORT_TIME_MODULE = """
from parallel import Parallel, delayed
def foo(i):
    return i
print("module body ran", flush=True)
print(Parallel(n_jobs=2)(delayed(foo)(i) for i in range(3)), flush=True)
"""


def test_sequential_call_at_import_time_of_a_task_module_works(tmp_path):
    # n_jobs=1 starts no process: it is not refused while a task loads.
    (tmp_path / "table_mod.py").write_text(
        "from parallel import Parallel, delayed\n"
        "TABLE = Parallel(n_jobs=1)(delayed(abs)(-i) for i in range(3))\n"
        "def f(x):\n    return x + sum(TABLE)\n")
    done = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]);"
         " import table_mod; from parallel import Parallel, delayed;"
         " print(Parallel(n_jobs=2)(delayed(table_mod.f)(i) for i in "
         "range(4)))", str(tmp_path)], cwd=ROOT, env=script_env(),
        capture_output=True, text=True, timeout=100)
    assert done.stdout.strip() == "[3, 4, 5, 6]", done.stderr


@pytest.mark.timeout(120)
def test_call_at_import_time_of_a_task_module_fails_once(tmp_path):
    # Workers import the module to load foo, which would start workers that
    # import it again, without end: the workers' call fails instead.
    (tmp_path / "importtime_mod.py").write_text(IMPORT_TIME_MODULE)
    done = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]);"
         " import importtime_mod", str(tmp_path)], cwd=ROOT,
        env=script_env(), capture_output=True, text=True, timeout=100)
    assert done.returncode != 0
    assert "started while this worker was loading a task" in done.stderr
    assert done.stdout.count("module body ran") <= 6, done.stdout   # bounded


def fail_first_or_sleep(i):
    if i == 0:
        raise ValueError("first task fails")
    time.sleep(4)
    return i


def sleep_and_pid(seconds):
    time.sleep(seconds)
    return os.getpid()


@pytest.mark.timeout(60)
def test_next_call_gets_full_n_jobs_while_an_abandoned_task_runs():
    # After an error, a sibling task still runs (workers are not killed):
    # the next call must not be left with fewer workers meanwhile.
    with pytest.raises(ValueError):
        Parallel(n_jobs=2, batch_size=1)(
            delayed(fail_first_or_sleep)(i) for i in range(2))
    t0 = time.monotonic()
    pids = Parallel(n_jobs=2, batch_size=1)(
        delayed(sleep_and_pid)(1.0) for _ in range(2))
    assert time.monotonic() - t0 < 1.8      # both ran at once
    assert len(set(pids)) == 2


TRACKER_CHILDREN_SCRIPT = r"""
import os, time
import numpy as np
import parallel
a = parallel.shared_zeros(10, np.int64)     # registers once with a tracker
time.sleep(1.0)
me = str(os.getpid())
states = []
for pid in os.listdir("/proc"):
    try:
        with open("/proc/%s/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        continue
    if fields[1] == me:
        states.append(fields[0])
print("zombies", states.count("Z"))
"""


def test_tracker_leaves_no_zombie_child():
    done = subprocess.run([sys.executable, "-c", TRACKER_CHILDREN_SCRIPT],
                          cwd=ROOT, env=script_env(), capture_output=True,
                          text=True, timeout=60)
    assert "zombies 0" in done.stdout, done.stdout + done.stderr


# --- from a fresh user's trial ----------------------------------------------
SIBLINGS_SCRIPT = r"""
import os, time
from parallel import Parallel, delayed
def siblings(_):
    time.sleep(0.2)
    ppid = os.getppid()
    with open("/proc/%d/task/%d/children" % (ppid, ppid)) as f:
        return len(f.read().split())
if __name__ == "__main__":
    for backend in ("loky", "multiprocessing"):
        print(max(Parallel(n_jobs=1000, backend=backend, batch_size=1)(
            [delayed(siblings)(i) for i in range(3)])))
    print(max(Parallel(n_jobs=1000, batch_size=1)(   # unknown length
        delayed(siblings)(i) for i in range(3))))
"""


@pytest.mark.skipif(not os.path.exists("/proc/%d/task/%d/children" % (
    os.getpid(), os.getpid())), reason="needs /proc/PID/task/TID/children")
def test_no_more_workers_than_tasks():
    # n_jobs=1000 for 3 tasks started 1000 processes.
    done = subprocess.run([sys.executable, "-c", SIBLINGS_SCRIPT], cwd=ROOT,
                          env=script_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    # 3 workers (besides them, the caller of 'multiprocessing' has the fork
    # server and the standard library's resource tracker as children)
    assert max(map(int, done.stdout.split())) <= 5, done.stdout


def test_an_unusable_temp_folder_fails_only_when_needed(tmp_path):
    import numpy as np
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    assert Parallel(n_jobs=2, temp_folder=str(not_a_folder))(
        delayed(abs)(-i) for i in range(4)) == [0, 1, 2, 3]
    with pytest.raises(OSError, match="temp_folder"):
        Parallel(n_jobs=2, temp_folder=str(not_a_folder))(
            delayed(np.sum)(np.ones(300_000)) for _ in range(2))


@pytest.mark.parametrize("value", ["abc", "nan", "-1"])
def test_a_bad_idle_worker_timeout_variable_is_named(monkeypatch, value):
    monkeypatch.setenv("PARALLEL_IDLE_WORKER_TIMEOUT", value)
    with pytest.raises(ValueError,
                       match="PARALLEL_IDLE_WORKER_TIMEOUT='%s'" % value):
        small_call("loky")


def test_a_tracker_that_cannot_start_leaves_no_folder(monkeypatch, tmp_path):
    def cannot_start():
        raise OSError(11, "Resource temporarily unavailable")
    monkeypatch.setattr(parallel._Tracker, "_start",
                        staticmethod(cannot_start))
    monkeypatch.setattr(parallel._Tracker, "_proc", None)
    assert Parallel(n_jobs=2, batch_size=1, temp_folder=str(tmp_path))(
        delayed(abs)(-i) for i in range(10)) == list(range(10))
    assert os.listdir(tmp_path) == []


def test_without_multiprocessing_calls_run_on_threads():
    code = ("import sys; sys.modules['multiprocessing'] = None\n"
            "from parallel import Parallel, delayed\n"
            "print(Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(3)))")
    done = run_script(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0, 1, 2]"


def test_a_with_block_after_a_short_call_gets_all_its_workers():
    p = Parallel(n_jobs=4, batch_size=1)
    assert len(set(p([delayed(getpid_slowly)(0)]))) == 1
    with p:     # (the cap from the first call's length gave it one)
        assert len(set(p([delayed(getpid_slowly)(i) for i in range(8)]))) > 1


def _recursive_call():
    return Parallel()(delayed(_recursive_call)() for _ in range(2))


@pytest.mark.timeout(120)
def test_recursive_calls_end_in_a_recursion_error_not_a_bomb():
    # joblib's test_thread_bomb_mitigation: threads nested in a worker
    # until the recursion limit; the RecursionError, too deep to pickle,
    # still reaches the caller as a RecursionError.
    with parallel.parallel_config("loky", n_jobs=2):
        with pytest.raises(RecursionError):
            _recursive_call()
