"""Core loop: delayed, validation, configuration, return_as, errors, verbose,
progress, timeout, nesting, concurrency (issue: core loop)."""

import multiprocessing
import os
import re
import sys
import threading
import time
import traceback

import pytest

import parallel
from parallel import (Parallel, ParallelTimeoutError, cpu_count, delayed,
                      effective_n_jobs, parallel_config,
                      register_parallel_backend)

from conftest import run_script

BARRIER_TIMEOUT_S = 20
ALL_BACKENDS = ["sequential", "threading", "loky", "multiprocessing"]
POOL_BACKENDS = ["threading", "loky", "multiprocessing"]


# --- module-level task functions (importable by workers) ------------------
def square(x):
    return x * x


def add(a, b=0):
    return a + b


def pid_and_thread(_=None):
    return os.getpid(), threading.get_ident()


def sleep_then(x, seconds):
    time.sleep(seconds)
    return x


class ConfigError(Exception):
    pass


def chained_task(i):
    try:
        {}["missing-key"]
    except KeyError as e:
        raise ConfigError(f"task {i} failed") from e
    return i


def fail_on(i, bad=3):
    if i == bad:
        raise ZeroDivisionError("task %d failed" % i)
    return i


def inner_parallel_info(_):
    """Run inside a worker: what nested Parallel calls do."""
    from parallel import Parallel, delayed
    me = os.getpid(), threading.get_ident()
    seq = Parallel()(delayed(pid_and_thread)() for _ in range(3))
    barrier = threading.Barrier(2, timeout=BARRIER_TIMEOUT_S)

    def meet(_):
        barrier.wait()
        return pid_and_thread()
    two = Parallel(n_jobs=2)(delayed(meet)(i) for i in range(2))

    def deeper(_):
        here = threading.get_ident()
        got = Parallel(n_jobs=2)(delayed(pid_and_thread)() for _ in range(3))
        return here, got
    deep = Parallel(n_jobs=2)(delayed(deeper)(i) for i in range(2))
    return me, seq, two, deep


# --- delayed ---------------------------------------------------------------
def test_delayed_returns_triple_and_keeps_name():
    call = delayed(add)(1, b=2)
    assert call == (add, (1,), {"b": 2})
    assert delayed(add).__name__ == "add"
    assert delayed(square).__name__ == "square"
    assert delayed(add).__wrapped__ is add


# --- n_jobs ---------------------------------------------------------------
def test_n_jobs_none_is_sequential_in_caller():
    out = Parallel()(delayed(pid_and_thread)() for _ in range(4))
    assert out == [(os.getpid(), threading.get_ident())] * 4


def test_effective_n_jobs_negative():
    n = cpu_count()
    assert effective_n_jobs(-1) == n
    assert effective_n_jobs(-2) == max(n - 1, 1)
    assert effective_n_jobs(1) == 1
    assert effective_n_jobs(None) == 1
    assert effective_n_jobs(3) == 3


def test_n_jobs_minus_one_runs():
    assert Parallel(n_jobs=-1, backend="threading")(
        delayed(square)(i) for i in range(5)) == [i * i for i in range(5)]


# --- validation --------------------------------------------------------------
BAD_PARALLEL_ARGS = [
    ("n_jobs", 0), ("n_jobs", 1.5), ("n_jobs", "2"), ("n_jobs", True),
    ("backend", "nope"), ("backend", 42),
    ("return_as", "x"), ("prefer", "x"), ("require", "x"),
    ("verbose", "x"),
    ("timeout", -1), ("timeout", 0), ("timeout", "x"),
    ("pre_dispatch", 0), ("pre_dispatch", -1), ("pre_dispatch", "abs(n_jobs)"),
    ("pre_dispatch", '__import__("os")'), ("pre_dispatch", "1" * 40),
    ("batch_size", 0), ("batch_size", -1), ("batch_size", 1.5),
    ("batch_size", True),
    ("temp_folder", 3), ("max_nbytes", "1Q"), ("max_nbytes", -5),
    ("mmap_mode", "x"), ("progress", 3),
]


@pytest.mark.parametrize("name,value", BAD_PARALLEL_ARGS,
                         ids=["%s=%r" % nv for nv in BAD_PARALLEL_ARGS])
def test_parallel_rejects_bad_parameter(name, value):
    with pytest.raises(ValueError) as info:
        Parallel(**{name: value})
    message = str(info.value)
    if name == "backend" and value == "nope":
        assert "nope" in message
    else:
        assert name in message, message
    if name == "n_jobs" and value != 0:
        assert isinstance(info.value, TypeError)


def test_parallel_rejects_prefer_processes_with_sharedmem():
    with pytest.raises(ValueError, match="sharedmem"):
        Parallel(prefer="processes", require="sharedmem")


BAD_CONFIG_ARGS = [
    ("n_jobs", 0), ("n_jobs", 1.5), ("n_jobs", "2"), ("n_jobs", True),
    ("prefer", "x"), ("require", "x"), ("verbose", "x"),
    ("temp_folder", 3), ("max_nbytes", "1Q"), ("max_nbytes", -5),
    ("mmap_mode", "x"), ("progress", 3), ("inner_max_num_threads", 0),
]


@pytest.mark.parametrize("name,value", BAD_CONFIG_ARGS,
                         ids=["%s=%r" % nv for nv in BAD_CONFIG_ARGS])
def test_parallel_config_rejects_bad_parameter(name, value):
    kwargs = {name: value}
    if name == "inner_max_num_threads":
        kwargs["backend"] = "loky"
    with pytest.raises(ValueError) as info:
        parallel_config(**kwargs)
    assert name in str(info.value)
    if name == "n_jobs" and value != 0:
        assert isinstance(info.value, TypeError)
    # a failed construction leaves no configuration active
    assert effective_n_jobs(None) == 1


def test_parallel_config_rejects_prefer_processes_with_sharedmem():
    with pytest.raises(ValueError, match="sharedmem"):
        parallel_config(prefer="processes", require="sharedmem")


@pytest.mark.parametrize("make", [lambda: Parallel(backend="nope"),
                                  lambda: parallel_config("nope"),
                                  lambda: parallel_config(backend="nope")],
                         ids=["Parallel", "config_pos", "config_kw"])
def test_unknown_backend(make):
    before = dict(parallel.BACKENDS)
    with pytest.raises(KeyError) as info:
        make()
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "nope" in message
    for name in ("loky", "threading", "multiprocessing", "sequential"):
        assert name in message
    assert parallel.BACKENDS == before
    assert effective_n_jobs(None) == 1


def test_loky_with_require_sharedmem_raises():
    with pytest.raises(ValueError, match="sharedmem"):
        Parallel(backend="loky", require="sharedmem")


# --- parallel_config -----------------------------------------------------------
def test_parallel_config_nesting_and_precedence():
    assert effective_n_jobs(None) == 1
    with parallel_config(backend="threading", n_jobs=3):
        assert effective_n_jobs(None) == 3
        assert Parallel().n_jobs == 3
        with parallel_config(n_jobs=2):
            assert effective_n_jobs(None) == 2
            p = Parallel()
            assert p.n_jobs == 2
            assert isinstance(p._backend, parallel.ThreadingBackend)
            assert Parallel(n_jobs=4).n_jobs == 4     # explicit arg wins
            with parallel_config(verbose=0):
                assert effective_n_jobs(None) == 2    # inherited
        assert effective_n_jobs(None) == 3
    assert effective_n_jobs(None) == 1
    assert Parallel().n_jobs == 1      # as joblib: the backend default
    with parallel_config(n_jobs=2) as config:   # every key, as joblib's
        assert config["n_jobs"] == 2 and config["backend"] is None
        assert {"verbose", "temp_folder", "max_nbytes", "mmap_mode", "prefer",
                "require"} <= set(config) and config["verbose"] == 0


def test_parallel_config_is_context_local():
    seen = {}
    with parallel_config(n_jobs=3):
        assert effective_n_jobs(None) == 3

        def probe():
            seen["n"] = effective_n_jobs(None)
        t = threading.Thread(target=probe)
        t.start()
        t.join(BARRIER_TIMEOUT_S)
    assert seen == {"n": 1}


def meet_in_barrier(barrier):
    barrier.wait()
    return threading.get_ident()


def test_prefer_threads_keeps_explicit_n_jobs():
    barrier = threading.Barrier(2, timeout=BARRIER_TIMEOUT_S)
    out = Parallel(n_jobs=2, prefer="threads")(
        delayed(meet_in_barrier)(barrier) for _ in range(2))
    assert len(set(out)) == 2
    assert threading.get_ident() not in out


def test_require_sharedmem_under_loky_config_gives_threads():
    barrier = threading.Barrier(2, timeout=BARRIER_TIMEOUT_S)
    with parallel_config("loky"):
        out = Parallel(n_jobs=2, require="sharedmem")(
            delayed(meet_in_barrier)(barrier) for _ in range(2))
        pids = Parallel(n_jobs=2, require="sharedmem")(
            delayed(os.getpid)() for _ in range(2))
    assert len(set(out)) == 2
    assert pids == [os.getpid()] * 2


class CountingThreads(parallel.ThreadingBackend):
    instances = []

    def __init__(self, tag="none", **kwargs):
        super().__init__(**kwargs)
        self.tag = tag
        CountingThreads.instances.append(self)


def test_register_parallel_backend_params_and_default():
    before_backends = dict(parallel.BACKENDS)
    before_default = parallel._DEFAULT_BACKEND[0]
    try:
        register_parallel_backend("counting", CountingThreads)
        with parallel_config("counting", n_jobs=2, tag="hello"):
            p = Parallel()
            assert isinstance(p._backend, CountingThreads)
            assert p._backend.tag == "hello"
            assert p(delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]
        register_parallel_backend("counting", CountingThreads,
                                  make_default=True)
        p = Parallel(n_jobs=2)
        assert isinstance(p._backend, CountingThreads)
        assert p(delayed(square)(i) for i in range(3)) == [0, 1, 4]
    finally:
        parallel.BACKENDS.clear()
        parallel.BACKENDS.update(before_backends)
        parallel._DEFAULT_BACKEND[0] = before_default
    assert not isinstance(Parallel(n_jobs=2)._backend, CountingThreads)


def test_register_parallel_backend_rejects_bad_input():
    with pytest.raises(ValueError, match="name"):
        register_parallel_backend("", CountingThreads)
    with pytest.raises(ValueError, match="factory"):
        register_parallel_backend("x", 3)
    assert "x" not in parallel.BACKENDS


# --- return_as -------------------------------------------------------------
@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("return_as", ["list", "generator",
                                       "generator_unordered"])
def test_return_as(backend, return_as):
    out = Parallel(n_jobs=2, backend=backend, return_as=return_as)(
        delayed(square)(i) for i in range(10))
    if return_as == "list":
        assert out == [i * i for i in range(10)]
        return
    assert not isinstance(out, list)
    out = list(out)
    if return_as == "generator":
        assert out == [i * i for i in range(10)]
    else:
        assert sorted(out) == [i * i for i in range(10)]


@pytest.mark.parametrize("backend", POOL_BACKENDS)
def test_generator_unordered_slow_first_task_comes_last(backend):
    gen = Parallel(n_jobs=2, backend=backend, return_as="generator_unordered",
                   batch_size=1)(
        delayed(sleep_then)(i, 1.5 if i == 0 else 0.01) for i in range(6))
    out = list(gen)
    assert sorted(out) == list(range(6))
    assert out[-1] == 0


def test_generator_is_lazy():
    pulled = []

    def producer():
        for i in range(100):
            pulled.append(i)
            yield delayed(square)(i)

    gen = Parallel(n_jobs=2, backend="threading", return_as="generator",
                   pre_dispatch=4, batch_size=1)(producer())
    consumed = 0
    for value in gen:
        assert value == consumed * consumed
        consumed += 1
        assert len(pulled) <= consumed + 4 + 1, (consumed, len(pulled))
        if consumed == 10:
            break
    gen.close()
    assert len(pulled) <= 15


def test_closing_generator_stops_threading_work():
    started = []
    lock = threading.Lock()

    def task(i):
        with lock:
            started.append(i)
        time.sleep(0.05)
        return i

    gen = Parallel(n_jobs=2, backend="threading", return_as="generator",
                   batch_size=1, pre_dispatch=4)(
        delayed(task)(i) for i in range(200))
    assert next(gen) == 0
    assert next(gen) == 1
    gen.close()
    time.sleep(0.5)
    count = len(started)
    time.sleep(0.3)
    assert len(started) == count
    assert count <= 2 + 4 + 2, started


@pytest.mark.parametrize("backend", ["threading", "loky"])
def test_generator_after_with_block_b06(backend):
    with Parallel(n_jobs=2, backend=backend, return_as="generator",
                  batch_size=1) as p:
        gen = p(delayed(sleep_then)(i * i, 0.1) for i in range(10))
        assert next(gen) == 0
    try:
        rest = list(gen)
    except RuntimeError as e:
        assert "closed" in str(e) or "context" in str(e), str(e)
    except (AttributeError, TypeError) as e:  # internal error leaked
        pytest.fail("internal error leaked: %r" % e)
    else:
        assert rest == [i * i for i in range(1, 10)]


@pytest.mark.parametrize("backend", ["threading", "loky"])
def test_closing_generator_inside_and_outside_block(backend):
    with Parallel(n_jobs=2, backend=backend, return_as="generator") as p:
        gen = p(delayed(square)(i) for i in range(10))
        assert next(gen) == 0
        gen.close()
        assert list(p(delayed(square)(i) for i in range(3))) == [0, 1, 4]
    gen = Parallel(n_jobs=2, backend=backend, return_as="generator")(
        delayed(square)(i) for i in range(10))
    assert next(gen) == 0
    gen.close()


def test_reentrant_call_raises():
    p = Parallel(n_jobs=2, backend="threading", return_as="generator")
    gen = p(delayed(square)(i) for i in range(10))
    assert next(gen) == 0
    with pytest.raises(RuntimeError, match="already running"):
        p(delayed(square)(i) for i in range(3))
    gen.close()
    assert list(p(delayed(square)(i) for i in range(3))) == [0, 1, 4]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_empty_input(backend):
    assert Parallel(n_jobs=2, backend=backend)([]) == []
    assert Parallel(n_jobs=2, backend=backend)(iter(())) == []


# --- errors ----------------------------------------------------------------
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_first_exception_reraised_with_type(backend):
    with pytest.raises(ZeroDivisionError, match="task 3 failed"):
        Parallel(n_jobs=2, backend=backend)(
            delayed(fail_on)(i) for i in range(8))
    # still usable
    assert Parallel(n_jobs=2, backend=backend)(
        delayed(square)(i) for i in range(3)) == [0, 1, 4]


@pytest.mark.parametrize("n_jobs,backend", [(2, "threading"),
                                            (1, "sequential")])
def test_threads_keep_original_exception_object(n_jobs, backend):
    raised = []

    def task(i):
        if i == 2:
            err = ValueError("original")
            raised.append(err)
            raise err
        return i

    with pytest.raises(ValueError) as info:
        Parallel(n_jobs=n_jobs, backend=backend)(
            delayed(task)(i) for i in range(4))
    assert raised and info.value is raised[0]
    assert id(info.value) == id(raised[0])
    frames = [f.f_code.co_name for f, _ in
              traceback.walk_tb(info.value.__traceback__)]
    assert "task" in frames


@pytest.mark.parametrize("backend", ["sequential", "threading", "loky",
                                     "multiprocessing"])
def test_exception_chain_kept_b03(backend):
    with pytest.raises(ConfigError) as info:
        Parallel(n_jobs=2, backend=backend)(
            delayed(chained_task)(i) for i in range(2))
    e = info.value
    assert isinstance(e.__cause__, KeyError), type(e.__cause__)
    assert "missing-key" in str(e.__cause__)
    report = "".join(traceback.format_exception(e))
    assert "in chained_task" in report
    assert re.search(r"task [01] failed", str(e))


# --- verbose ----------------------------------------------------------------
def test_verbose_10_prints_to_stderr(capsys):
    Parallel(n_jobs=2, backend="threading", verbose=10, batch_size=1)(
        delayed(sleep_then)(i, 0.01) for i in range(10))
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert any(line.startswith("[Parallel(n_jobs=2)]: Done") for line in lines)
    assert re.search(r"^\[Parallel\(n_jobs=2\)\]: Done  10 out of  10 \| "
                     r"elapsed: .* finished$", captured.err, re.M), \
        captured.err
    assert lines[-1].endswith("finished")


def test_verbose_final_line_with_known_length(capsys):
    Parallel(n_jobs=2, backend="threading", verbose=10)(
        [delayed(square)(i) for i in range(10)])
    err = capsys.readouterr().err
    assert re.search(r"Done 10 out of 10 \| elapsed: .* finished$", err,
                     re.M), err


@pytest.mark.parametrize("verbose", [-1, 0])
@pytest.mark.parametrize("n_jobs,backend", [(1, None), (2, "threading"),
                                            (2, "loky")])
def test_verbose_nonpositive_is_silent(capsys, verbose, n_jobs, backend):
    Parallel(n_jobs=n_jobs, backend=backend, verbose=verbose)(
        delayed(square)(i) for i in range(10))
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_verbose_50_goes_to_stdout(capsys):
    Parallel(n_jobs=2, backend="threading", verbose=50)(
        delayed(square)(i) for i in range(10))
    captured = capsys.readouterr()
    assert "[Parallel(n_jobs=2)]: Done" in captured.out
    assert "finished" in captured.out
    assert "[Parallel(" not in captured.err


# --- progress ---------------------------------------------------------------
@pytest.mark.parametrize("n_jobs,backend", [(1, None), (2, "threading"),
                                            (2, "loky")])
def test_progress_callable(n_jobs, backend):
    calls = []
    caller = threading.get_ident()

    def progress(done, total):
        assert threading.get_ident() == caller
        calls.append((done, total))

    out = Parallel(n_jobs=n_jobs, backend=backend, progress=progress)(
        [delayed(square)(i) for i in range(12)])
    assert out == [i * i for i in range(12)]
    assert calls, "progress never called"
    assert calls[-1] == (12, 12)
    dones = [d for d, _ in calls]
    assert dones == sorted(dones)


def test_progress_true_prints_bar(capsys):
    Parallel(n_jobs=2, backend="threading", progress=True)(
        [delayed(square)(i) for i in range(10)])
    err = capsys.readouterr().err
    try:
        import tqdm  # noqa: F401
    except ImportError:
        assert "10/10" in err
    else:
        assert "10/10" in err and "%" in err, err


# --- timeout ----------------------------------------------------------------
def test_threading_timeout():
    started = []
    finished = threading.Semaphore(0)
    lock = threading.Lock()

    def task(i):
        with lock:
            started.append(i)
        try:
            time.sleep(1.5 if i < 2 else 0.0)
        finally:
            finished.release()
        return i

    deadline = 0.5
    t0 = time.monotonic()
    with pytest.raises(ParallelTimeoutError) as info:
        Parallel(n_jobs=2, backend="threading", timeout=deadline,
                 batch_size=1)(delayed(task)(i) for i in range(8))
    elapsed = time.monotonic() - t0
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, multiprocessing.TimeoutError)
    assert elapsed < deadline + 2.0, elapsed
    assert elapsed >= deadline * 0.9, elapsed
    # the two running tasks finish in the background; nothing new starts
    for _ in range(2):
        assert finished.acquire(timeout=10)
    time.sleep(0.3)
    assert sorted(started) == [0, 1], started


# --- nesting -------------------------------------------------------------------
def test_nested_in_loky_worker():
    [(me, seq, two, deep)] = Parallel(n_jobs=2, backend="loky")(
        [delayed(inner_parallel_info)(0)])
    worker_pid, worker_thread = me
    assert worker_pid != os.getpid()
    assert seq == [me] * 3                     # Parallel(): sequential
    assert {pid for pid, _ in two} == {worker_pid}
    assert len({t for _, t in two}) == 2       # Parallel(n_jobs=2): threads
    for here, got in deep:                     # deeper levels: sequential
        assert got == [(worker_pid, here)] * 3


# --- concurrency ------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["threading", "loky"])
def test_concurrent_parallel_calls_from_threads(backend):
    n_callers = 4
    barrier = threading.Barrier(n_callers, timeout=BARRIER_TIMEOUT_S)
    results, errors = {}, {}

    def caller(k):
        barrier.wait()
        try:
            if k == 1:
                Parallel(n_jobs=2, backend=backend)(
                    delayed(fail_on)(i) for i in range(6))
            else:
                results[k] = Parallel(n_jobs=2, backend=backend)(
                    delayed(add)(i, k) for i in range(30))
        except Exception as e:
            errors[k] = e

    threads = [threading.Thread(target=caller, args=(k,))
               for k in range(n_callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive()
    assert set(errors) == {1} and isinstance(errors[1], ZeroDivisionError)
    for k in (0, 2, 3):
        assert results[k] == [i + k for i in range(30)]


# --- import is light ---------------------------------------------------------------
def test_import_does_not_load_numpy_or_cloudpickle():
    proc = run_script(
        "import sys, parallel\n"
        "print(sorted(m for m in ('numpy', 'cloudpickle') if m in sys.modules))",
        timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_calls_without_arrays_do_not_import_numpy():
    """The caller imports numpy only when arrays are involved (a process
    call's clean-up once imported it, adding ~50 ms to a first call)."""
    proc = run_script(
        "import sys\n"
        "from parallel import Parallel, delayed\n"
        "for backend in ('loky', 'multiprocessing', 'threading'):\n"
        "    for mode in ('r', 'r+'):\n"
        "        Parallel(n_jobs=2, backend=backend, mmap_mode=mode)(\n"
        "            delayed(abs)(i) for i in range(4))\n"
        "print(sorted(m for m in ('numpy', 'cloudpickle') if m in sys.modules))",
        timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# --- auto batching -----------------------------------------------------------------
def test_auto_batching_many_tiny_tasks_on_threads():
    out = Parallel(n_jobs=2, backend="threading", batch_size="auto")(
        delayed(add)(i, 1) for i in range(10_000))
    assert out == [i + 1 for i in range(10_000)]



def test_auto_batch_tail_is_split_but_not_below_a_millisecond():
    batcher = parallel._AutoBatcher(min_s=0.2, max_s=2.0)
    batcher.record(1, 0.01)           # 10 ms tasks: grows to 8 per batch
    assert batcher.next_size(2) == 8
    assert batcher.next_size(2, remaining=1000) == 8
    assert batcher.next_size(2, remaining=12) == 3   # 12 left, 2 workers
    assert batcher.next_size(2, remaining=2) == 1
    tiny = parallel._AutoBatcher(min_s=0.2, max_s=2.0)
    for size in (1, 8, 64, 512, 4096):
        tiny.record(size, size * 1e-7)     # 0.1 us tasks
    assert tiny.next_size(2) == 32768
    # splitting 20,000 tasks four ways would make 0.5 ms batches
    assert tiny.next_size(2, remaining=20_000) == 10_000
    assert tiny.next_size(2, remaining=10**6) == 32768


# --- side by side with joblib ------------------------------------------------
def _verbose_lines(module, n_jobs, verbose, n, as_generator):
    import contextlib
    import io
    import re
    buffer = io.StringIO()
    calls = (module.delayed(abs)(-i) for i in range(n))
    with contextlib.redirect_stderr(buffer), contextlib.redirect_stdout(buffer):
        module.Parallel(n_jobs=n_jobs, verbose=verbose)(
            calls if as_generator else list(calls))
    lines = buffer.getvalue().splitlines()
    return [re.sub(r"elapsed:.*", "elapsed: T", line) for line in lines]


@pytest.mark.parametrize("verbose", [1, 5, 10, 11, 50])
@pytest.mark.parametrize("n, as_generator", [(12, False), (30, True),
                                             (30, False), (150, False)])
def test_verbose_lines_match_joblib(verbose, n, as_generator):
    """n_jobs=1 is deterministic: the same progress lines as joblib 1.6."""
    env = dict(os.environ)
    joblib = pytest.importorskip("joblib")
    os.environ.clear()            # import joblib sets KMP_INIT_AT_FORK
    os.environ.update(env)
    ours = _verbose_lines(parallel, 1, verbose, n, as_generator)
    theirs = _verbose_lines(joblib, 1, verbose, n, as_generator)
    assert ours == theirs


def test_progress_true_without_tqdm_prints_a_text_bar(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    Parallel(n_jobs=2, backend="threading", progress=True)(
        [delayed(square)(i) for i in range(10)])
    err = capsys.readouterr().err
    assert "10/10" in err and "#" in err, err


# --- cpu_count: affinity, cgroup quotas, environment --------------------------
def _cgroup_tree(tmp_path, files, own="/"):
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    root.mkdir(exist_ok=True)
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text("0::%s\n" % own)
    return str(root), str(proc)


@pytest.mark.parametrize("files, own, expected", [
    ({"cpu.max": "100000 100000"}, "/", 1),                       # v2 root
    ({"user.slice/app.scope/cpu.max": "150000 100000"},           # B20:
     "/user.slice/app.scope", 2),                                  # own cgroup
    ({"a/cpu.max": "100000 100000", "a/b/cpu.max": "max 100000"},  # parent's
     "/a/b", 1),                                                   # quota
    ({"cpu.max": "max 100000"}, "/", None),                        # no quota
    ({"cpu.max": ""}, "/", None),                                  # empty
    ({"cpu.max": "garbage"}, "/", None),                           # malformed
    ({"cpu/cpu.cfs_quota_us": "250000",                            # v1
      "cpu/cpu.cfs_period_us": "100000"}, "/", 3),
    ({"cpu/cpu.cfs_quota_us": "-1",
      "cpu/cpu.cfs_period_us": "100000"}, "/", None),
])
def test_cgroup_cpu_limit(tmp_path, files, own, expected):
    root, proc = _cgroup_tree(tmp_path, files, own)
    assert parallel._cgroup_cpu_limit(root, proc) == expected


def test_cpu_count_honours_affinity_and_environment():
    code = "from parallel import cpu_count; print(cpu_count())"
    done = run_script(code, env={"PARALLEL_MAX_CPU_COUNT": "1"})
    assert done.stdout.strip() == "1", done.stderr
    done = run_script(code, env={"LOKY_MAX_CPU_COUNT": "1"})
    assert done.stdout.strip() == "1", done.stderr
    done = run_script(code, env={"LOKY_MAX_CPU_COUNT": "0"})   # as loky
    assert done.stdout.strip() == "1", done.stderr
    done = run_script(code, env={"LOKY_MAX_CPU_COUNT": "two"})
    assert "LOKY_MAX_CPU_COUNT='two' is not an integer" in done.stderr
    if hasattr(os, "sched_setaffinity"):
        code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity"
                "(0))})\nfrom parallel import cpu_count, effective_n_jobs\n"
                "print(cpu_count(), effective_n_jobs(-1))")
        done = run_script(code)
        assert done.stdout.split() == ["1", "1"], done.stderr


# --- joblib compatibility found by running joblib's own tests -----------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("pre_dispatch,batch_size,expected", [
    (3, 1, 3), (1, 1, 1), ("2*n_jobs", 1, 4), ("2*n_jobs", 5, 4)])
def test_pre_dispatch_counts_tasks_read_up_front(pre_dispatch, batch_size,
                                                 expected):
    # As joblib: until a first batch ends, at most pre_dispatch tasks are
    # read from the input, whatever the batch size.
    gate = threading.Event()
    pulled = []

    def task(i):
        gate.wait(10)
        return i

    def producer():
        for i in range(40):
            pulled.append(i)
            yield delayed(task)(i)

    out = []
    runner = threading.Thread(target=lambda: out.extend(Parallel(
        n_jobs=2, backend="threading", pre_dispatch=pre_dispatch,
        batch_size=batch_size)(producer())))
    runner.start()
    try:
        time.sleep(0.5)
        assert len(pulled) == expected
    finally:
        gate.set()
        runner.join(30)
    assert out == list(range(40))


def test_multiprocessing_context_as_backend():
    ctx = multiprocessing.get_context("spawn")
    p = Parallel(n_jobs=2, backend=ctx)
    assert isinstance(p._backend, parallel.MultiprocessingBackend)
    assert p(delayed(square)(i) for i in range(5)) == [0, 1, 4, 9, 16]
    assert p._backend.start_method == "spawn"
    with parallel_config(backend=ctx):
        assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(3)) == \
            [0, 1, 4]


class _NoSuperInitBackend(parallel.SequentialBackend):
    def __init__(self, param=None):   # joblib's tests do this
        self.param = param


class _OldStyleNestedBackend(parallel.ThreadingBackend):
    def get_nested_backend(self):     # joblib's older contract
        return super().get_nested_backend()[0]


def test_custom_backends_of_joblib_shapes_work():
    register_parallel_backend("no_super_init", _NoSuperInitBackend)
    register_parallel_backend("old_style_nested", _OldStyleNestedBackend)
    try:
        with parallel_config("no_super_init", param=42):
            assert Parallel()(delayed(square)(i) for i in range(3)) == \
                [0, 1, 4]
        with parallel_config(_NoSuperInitBackend(43)):
            assert Parallel()(delayed(square)(i) for i in range(3)) == \
                [0, 1, 4]
        assert Parallel(n_jobs=2, backend="old_style_nested")(
            delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]
    finally:
        parallel.BACKENDS.pop("no_super_init", None)
        parallel.BACKENDS.pop("old_style_nested", None)


def test_parallel_config_with_target_holds_a_backend_instance():
    with parallel_config("threading", n_jobs=2) as cfg:
        assert isinstance(cfg["backend"], parallel.ThreadingBackend)
        assert cfg["backend"].nesting_level == 0
        assert cfg["n_jobs"] == 2
        assert Parallel()._backend is cfg["backend"]    # as joblib
    with parallel_config("loky", n_jobs=2) as cfg:
        p = Parallel(inner_max_num_threads=1)
        assert p._backend.inner_max_num_threads == 1
        assert cfg["backend"].inner_max_num_threads is None  # untouched


def test_require_sharedmem_sets_aside_the_configured_backend_and_n_jobs():
    with parallel_config("loky", n_jobs=2):
        p = Parallel(require="sharedmem")
        assert type(p._backend) is parallel.ThreadingBackend
        assert p.n_jobs == 1          # the n_jobs was the set-aside backend's
        p = Parallel(n_jobs=3, require="sharedmem")
        assert p.n_jobs == 3
    with parallel_config(n_jobs=2):  # no backend: the n_jobs stays
        assert Parallel(require="sharedmem").n_jobs == 2


def test_retrieval_context_is_entered_once_per_call():
    entered = []

    class Backend(parallel.ThreadingBackend):
        def retrieval_context(self):
            import contextlib

            @contextlib.contextmanager
            def context():
                entered.append(1)
                yield
            return context()

    assert Parallel(n_jobs=2, backend=Backend(), batch_size=1)(
        delayed(square)(i) for i in range(6)) == [0, 1, 4, 9, 16, 25]
    assert entered == [1]


def nested_call_report(backend, n_jobs):
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pids = Parallel(n_jobs=n_jobs, backend=backend)(
            delayed(os.getpid)() for _ in range(4))
    return [str(w.message) for w in caught], len(set(pids))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("outer,inner,message", [
    ("loky", "multiprocessing", "Multiprocessing-backed parallel loops "
     "cannot be nested, below loky, setting n_jobs=1"),
    ("loky", "loky", None),
    ("multiprocessing", "multiprocessing", "Multiprocessing-backed parallel "
     "loops cannot be nested, setting n_jobs=1"),
    ("multiprocessing", "loky", "Loky-backed parallel loops cannot be called "
     "in a multiprocessing worker, setting n_jobs=1"),
    ("threading", "multiprocessing", "Multiprocessing-backed parallel loops "
     "cannot be nested below threads, setting n_jobs=1"),
    ("threading", "loky", "Loky-backed parallel loops cannot be nested "
     "below threads, setting n_jobs=1"),
])
def test_nested_process_calls_are_reduced_with_a_warning_b19(outer, inner,
                                                             message):
    # As joblib: no n_jobs x n_jobs processes; said in a warning.
    [(caught, n_pids)] = Parallel(n_jobs=2, backend=outer)(
        delayed(nested_call_report)(inner, 2) for _ in range(1))
    if message is None:
        assert caught == [] and n_pids == 2
    else:
        assert caught == [message] and n_pids == 1
    [(caught, _)] = Parallel(n_jobs=2, backend=outer)(
        delayed(nested_call_report)(inner, 1) for _ in range(1))
    assert caught == []


THREAD_EXIT_SCRIPT = r"""
import time
from parallel import Parallel, delayed
def stuck(i):
    time.sleep(30 if i == 1 else 0.01)
    return i
def fails(i):
    if i == 0:
        raise ValueError("boom")
    time.sleep(30)
for make, error in ((lambda: Parallel(n_jobs=2, prefer="threads", timeout=1)(
        delayed(stuck)(i) for i in range(4)), TimeoutError),
                    (lambda: Parallel(n_jobs=2, prefer="threads")(
        delayed(fails)(i) for i in range(2)), ValueError)):
    try:
        make()
    except error as e:
        print(type(e).__name__, flush=True)
"""


@pytest.mark.timeout(60)
def test_abandoned_thread_tasks_do_not_delay_exit():
    # As joblib's: after a timeout or an error the running thread tasks are
    # left to daemon threads; the interpreter exits at once.
    t0 = time.monotonic()
    done = run_script(THREAD_EXIT_SCRIPT, timeout=50)
    assert done.stdout.split() == ["ParallelTimeoutError", "ValueError"], \
        done.stdout + done.stderr
    assert done.returncode == 0
    assert time.monotonic() - t0 < 15


def call_in_pool_worker(backend):
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = Parallel(n_jobs=2, backend=backend)(
            delayed(abs)(-k) for k in range(4))
    return out, [str(w.message) for w in caught]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_call_inside_a_multiprocessing_pool_worker_runs_sequentially(backend):
    # A daemonic process may not have children (a Pool or Celery worker):
    # as joblib, n_jobs=1 and a warning instead of an AssertionError.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        out, caught = pool.apply(call_in_pool_worker, (backend,))
    assert out == [0, 1, 2, 3]
    assert len(caught) == 1 and "cannot be called in a daemonic" in caught[0]


class _ProgressParallel(Parallel):
    """joblib's popular recipe for a progress bar (joblib#972)."""

    def __init__(self, *args, **kwargs):
        self.seen = []
        super().__init__(*args, **kwargs)

    def print_progress(self):
        self.seen.append((self.n_completed_tasks, self.n_dispatched_tasks))


@pytest.mark.parametrize("backend", ["threading", "loky"])
def test_print_progress_override_drives_a_progress_bar(backend):
    p = _ProgressParallel(n_jobs=2, backend=backend, batch_size=2)
    assert p(delayed(square)(i) for i in range(20)) == \
        [i * i for i in range(20)]
    assert len(p.seen) == 10                      # once per finished batch
    assert p.seen[-1] == (20, 20)
    assert all(done <= sent for done, sent in p.seen)
    assert [done for done, _ in p.seen] == sorted(done for done, _ in p.seen)
    assert p.n_dispatched_batches == 10


def make_array(i):
    import numpy as np
    return np.ones(1000) * i


def test_idle_threads_keep_no_results_alive_in_a_with_block():
    import gc
    import weakref
    with Parallel(n_jobs=2, backend="threading", batch_size=1) as p:
        out = p(delayed(make_array)(i) for i in range(4))
        refs = [weakref.ref(a) for a in out]
        del out
        gc.collect()
        assert [r() for r in refs] == [None] * 4


def test_multiprocessing_module_as_backend_leaves_the_start_method_alone():
    before = multiprocessing.get_start_method(allow_none=True)
    assert Parallel(n_jobs=2, backend=multiprocessing)(
        delayed(square)(i) for i in range(3)) == [0, 1, 4]
    assert multiprocessing.get_start_method(allow_none=True) == before


def test_failing_retrieval_context_still_ends_the_call():
    class Broken(parallel.ThreadingBackend):
        def retrieval_context(self):
            raise RuntimeError("no context")

    p = Parallel(n_jobs=2, backend=Broken())
    with pytest.raises(RuntimeError, match="no context"):
        p(delayed(square)(i) for i in range(3))
    assert not p._call.active


def test_error_and_warning_texts_that_joblib_tests_match():
    import warnings
    with pytest.raises(ValueError, match="Invalid backend:"):
        Parallel(backend="unit-testing")
    with pytest.raises(ValueError, match="Invalid backend:"):
        with parallel_config(backend="unit-testing"):
            pass
    with pytest.raises(ValueError, match="n_jobs == 0 in Parallel has no "
                       "meaning"):
        Parallel(n_jobs=0)
    for bad in ("2.3", "invalid_str"):
        with pytest.raises(ValueError, match="n_jobs could not be converted "
                           "to int"):
            Parallel(n_jobs=bad)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Parallel(n_jobs=1, timeout=1)(delayed(square)(i) for i in range(5))
    assert [str(w.message) for w in caught] == [
        "The backend class 'SequentialBackend' does not support timeout. "
        "You have set 'timeout=1' in Parallel but the 'timeout' parameter "
        "will not be used."]


def test_sharedmem_fallback_prints_joblibs_line(capsys):
    with parallel_config("loky"):
        p = Parallel(n_jobs=2, require="sharedmem", verbose=10)
    assert type(p._backend) is parallel.ThreadingBackend
    out, err = capsys.readouterr()
    assert out.strip() == ("Using ThreadingBackend as joblib backend instead "
                           "of LokyBackend as the latter does not provide "
                           "shared memory semantics.")
    assert err == ""


def test_prefer_and_require_errors_in_joblibs_words():
    with pytest.raises(ValueError, match="prefer=wrong is not a valid "
                       "backend hint"):
        Parallel(prefer="wrong")
    with pytest.raises(ValueError, match="require=wrong is not a valid "
                       "backend constraint"):
        parallel_config(require="wrong")
    with pytest.raises(ValueError, match="only supported when backend is "
                       "not None"):
        parallel_config(inner_max_num_threads=1)


@pytest.mark.parametrize("backend", ["threading", "loky"])
def test_generator_closed_or_dropped_before_any_next_ends_the_call(backend):
    import gc
    p = Parallel(n_jobs=2, backend=backend, return_as="generator")
    gen = p(delayed(square)(i) for i in range(10))
    gen.close()
    assert p(delayed(square)(i) for i in range(3)) is not None
    assert list(p(delayed(square)(i) for i in range(3))) == [0, 1, 4]
    gen = p(delayed(square)(i) for i in range(10))
    del gen
    gc.collect()
    assert list(p(delayed(square)(i) for i in range(3))) == [0, 1, 4]


def test_generator_output_starts_the_work_at_once():
    # As joblib: the tasks run while the caller does something else.
    gen = Parallel(n_jobs=2, prefer="threads", return_as="generator")(
        delayed(time.sleep)(0.3) for _ in range(2))
    time.sleep(0.6)
    t0 = time.monotonic()
    assert list(gen) == [None, None]
    assert time.monotonic() - t0 < 0.2


def test_batches_in_flight_after_the_first_as_joblib():
    # n_jobs=2, batch_size=4, pre_dispatch 2*n_jobs: the first 4 tasks make
    # 2 batches; then one batch of 4 goes per finished batch.
    p = _ProgressParallel(n_jobs=2, backend="threading", batch_size=4)
    p(delayed(time.sleep)(0.01) for _ in range(20))
    assert p.seen[:3] == [(2, 4), (4, 8), (8, 12)]


def test_n_jobs_1_runs_tasks_one_by_one_with_joblibs_progress_calls():
    p = _ProgressParallel(n_jobs=1, batch_size=4)
    assert p(delayed(square)(i) for i in range(20)) == \
        [i * i for i in range(20)]
    assert len(p.seen) == 21 and p.seen[:2] == [(1, 1), (2, 2)]
    assert p.seen[-1] == (20, 20)


def test_n_jobs_1_reads_batch_size_tasks_ahead_as_joblib():
    # joblib 1.6's test_dispatch_one_job: the input is read batch_size tasks
    # at a time, the tasks run one by one.
    log = []

    def produce():
        for i in range(6):
            log.append("produced %d" % i)
            yield delayed(log.append)("consumed %d" % i)
    for batch_size, reads in ((1, [1] * 6), (4, [4, 2])):
        log.clear()
        Parallel(n_jobs=1, batch_size=batch_size)(produce())
        expected = []
        done = 0
        for n in reads:
            expected += ["produced %d" % i for i in range(done, done + n)]
            expected += ["consumed %d" % i for i in range(done, done + n)]
            done += n
        assert log == expected


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_progress_of_a_generator_input_ends_with_its_total(n_jobs):
    seen = []
    Parallel(n_jobs=n_jobs, backend="threading",
             progress=lambda done, total: seen.append((done, total)))(
        delayed(abs)(i) for i in range(5))
    assert seen[-1] == (5, 5)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
