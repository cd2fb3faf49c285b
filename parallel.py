"""Embarrassingly parallel for loops, with shared numpy arrays and atomics.

``parallel`` runs ``Parallel(n_jobs=4)(delayed(f)(x) for x in data)`` exactly as
joblib does (``from parallel import Parallel, delayed`` is a drop-in for
``from joblib import Parallel, delayed``), on processes, threads, or a
dask.distributed or Ray cluster, and goes past joblib with numpy arrays that
every worker maps writable and updates with atomic add, min, max and
compare-and-swap.

>>> from math import sqrt
>>> from parallel import Parallel, delayed
>>> Parallel(n_jobs=2)(delayed(sqrt)(i ** 2) for i in range(5))
[0.0, 1.0, 2.0, 3.0, 4.0]

What it is not: a task graph scheduler, a cache (no ``Memory``), or a
replacement for a cluster manager.  It is one module with three runtime
dependencies (numpy, cffi, cloudpickle), each imported only when first needed,
so vendoring ``parallel.py`` (plus ``_shm.c`` and ``build_shm.py`` for the
atomics) into ``yourpkg/_vendor/`` is supported.

Data flow of one call::

    Parallel.__call__(iterable of delayed calls)          caller thread
      -> pull up to pre_dispatch tasks (generators stay lazy)
      -> cut them into batches (auto size from measured durations)
      -> backend.submit(batch, callback)
           process backend: pickle the batch once (the stdlib pickler;
           cloudpickle for what must travel by value; arrays above
           max_nbytes -> a segment in the call's folder, sent by reference)
           -> pool manager thread -> idle worker's pipe -> worker maps the
           segments, runs the calls under the nested configuration,
           pickles the results back (arrays above 1 MB through a segment)
      -> callback (any thread) -> completion queue -> caller thread:
           record duration (auto-batching), progress, dispatch more
      -> results in order ('list', 'generator') or as completed
         ('generator_unordered')
      -> error / timeout / worker crash / Ctrl-C: stop dispatching, cancel
         queued batches, kill what must stop, remove the call's segments, raise

Environment variables:

``PARALLEL_MAX_CPU_COUNT`` (``LOKY_MAX_CPU_COUNT``)
    upper bound for :func:`cpu_count`.
``PARALLEL_START_METHOD`` (``JOBLIB_START_METHOD``)
    start method of the process backend: ``forkserver`` (default where
    available), ``spawn`` or ``fork``.
``PARALLEL_PICKLER`` (``LOKY_PICKLER``)
    module whose ``Pickler`` class serializes tasks (default: the standard
    library's, with cloudpickle for lambdas, closures and ``__main__``).
``PARALLEL_TEMP_FOLDER`` (``JOBLIB_TEMP_FOLDER``)
    folder for shared segments (default ``/dev/shm`` when it has room).
``PARALLEL_MULTIPROCESSING`` (``JOBLIB_MULTIPROCESSING``)
    ``0`` disables process backends (they fall back to threads with a warning).
``PARALLEL_IDLE_WORKER_TIMEOUT``
    seconds an idle worker process waits for work before it exits (300).
``PARALLEL_SHM_CACHE``
    folder where the C helper is built on first use (``~/.cache/parallel``).

The C helper (``_parallel_shm``, from ``_shm.c``) is looked up next to this
module, then as a top-level module, then built on first use into the cache
folder; without it everything but the atomics works
(``parallel.HAS_SHM_HELPER`` says which).

Copyright (c) 2026 the parallel developers.  BSD 3-Clause License: use,
copy, modify and redistribute with this notice kept.
"""
from __future__ import annotations

import atexit
import collections
import contextlib
import contextvars
import functools
import importlib
import importlib.machinery
import importlib.util
import io
import itertools
import math
import operator
import os
import pickle
import signal
import sys
import threading
import time
import types
import warnings
import weakref
from typing import (Any, Callable, Dict, Generic, Iterable, Iterator, List,
                    Literal, Optional, ParamSpec, Tuple, TypeVar, Union,
                    overload)

__version__ = "0.1.0"

__all__ = [
    "Parallel", "delayed", "parallel_config", "parallel_backend",
    "register_parallel_backend", "effective_n_jobs", "cpu_count",
    "ParallelBackendBase", "SequentialBackend", "ThreadingBackend",
    "LokyBackend", "ProcessBackend", "MultiprocessingBackend", "EXTERNAL_BACKENDS",
    "TerminatedWorkerError", "ParallelTimeoutError", "WorkerError",
    "InvalidParameterError", "UnknownBackendError", "DaskBackend",
    "DaskDistributedBackend",
    "RayBackend",
    "wrap_non_picklable_objects",
    "SharedArray", "shared_zeros", "shared_empty", "shared_array",
    "atomic_add", "atomic_max", "atomic_min", "compare_and_swap",
    "AtomicView", "shm_helper_available", "build_shm_helper",
    "dump", "load",
]

# ======================================================================
# CONSTANTS AND TUNABLES
# ======================================================================
# Auto-batching aims at batches lasting between these durations (joblib's
# band).  Thread batches cost far less to dispatch, so they aim lower.
_MIN_IDEAL_BATCH_DURATION_S = 0.2
_MAX_IDEAL_BATCH_DURATION_S = 2.0
_THREAD_MIN_IDEAL_BATCH_DURATION_S = 0.002
_THREAD_MAX_IDEAL_BATCH_DURATION_S = 0.05
# Near the end of the input, batches are split so that no worker is left
# holding the tail, but not into batches lasting less than this.
_TAIL_SPLIT_MIN_BATCH_S = 0.001
# A batch size may grow at most this many times from one batch to the next.
_MAX_BATCH_GROWTH = 8
# Before forking a worker, wait at most this long for other threads' imports
# to finish (see _NoImportInFlight).
_FORK_IMPORT_WAIT_S = 5.0
_DEFAULT_MAX_NBYTES = "1M"
_DEFAULT_MMAP_MODE = "r"
_DEFAULT_PRE_DISPATCH = "2 * n_jobs"
_DEFAULT_IDLE_WORKER_TIMEOUT_S = 300.0
# /dev/shm is used for segments only with at least this much room (joblib's).
_MIN_DEV_SHM_FREE_BYTES = 2_000_000_000
# Longest the caller blocks before it checks for Ctrl-C and deadlines.
_RESULT_POLL_INTERVAL_S = 0.1
# How often a worker checks that its parent is still alive.
_PARENT_POLL_INTERVAL_S = 0.5
# Call folders holding at least this much are removed in the background.
_BACKGROUND_REMOVAL_MIN_NBYTES = 32 << 20
# Results of workers larger than this travel through a segment, not a pipe.
_RESULT_SEGMENT_MIN_NBYTES = 1 << 20
_MAX_PRE_DISPATCH_EXPRESSION_LEN = 30
# On dask and Ray, an argument object at least this large travels once per
# call (dask's scatter, Ray's object store), not once per task (joblib's
# threshold for dask).
_CLUSTER_SHARE_MIN_NBYTES = 1000
# How long the dask backend waits for a first worker (joblib's default).
_DASK_WAIT_FOR_WORKERS_S = 10.0
_THREAD_LIMIT_VARIABLES = (
    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
_SEGMENT_PREFIX = "parallel_"


def _env(name, legacy=None, default=None):
    """Read ``PARALLEL_<name>``, else joblib's/loky's legacy variable."""
    value = os.environ.get(name)
    if value is None and legacy is not None:
        value = os.environ.get(legacy)
    return default if value in (None, "") else value


# ======================================================================
# PLATFORM PROBES
# ======================================================================
def _multiprocessing_available():
    """False when process backends are disabled or cannot work here."""
    if _env("PARALLEL_MULTIPROCESSING", "JOBLIB_MULTIPROCESSING", "1") == "0":
        return False
    try:
        import multiprocessing
        multiprocessing.get_context("spawn")
        import _multiprocessing  # type: ignore  # noqa: F401  (not on Pyodide)
    except (ImportError, ValueError):
        return False
    return True


# Held by every start of a child process by this module (workers, the
# tracker, the helper's build): a fork made while another thread is inside
# subprocess.Popen or Process.start would inherit that thread's private
# pipes and hide the other child's start or death.
_START_LOCK = threading.Lock()


def _read_text(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _quota_cpus(quota, period):
    """ceil(quota / period) from cgroup values, None when there is no quota."""
    try:
        quota, period = int(quota), int(period)
    except (TypeError, ValueError):
        return None
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


@functools.lru_cache(maxsize=None)
def _cgroup_cpu_limit(root="/sys/fs/cgroup", proc_cgroup="/proc/self/cgroup"):
    """The tightest CPU quota over the cgroup (v2 and v1) of this process.

    cgroup v2: ``cpu.max`` ("<quota> <period>" or "max <period>") in the
    process's own cgroup folder (from ``/proc/self/cgroup``) and every parent
    up to the root; v1: ``cpu.cfs_quota_us``/``cpu.cfs_period_us``.  Empty or
    malformed files are ignored.  Returns None without a quota.  Read once
    per process (cached).
    """
    limits = []
    own = ""
    lines = (_read_text(proc_cgroup) or "").splitlines()
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[0] == "0":
            own = parts[2]
    rel = own.strip("/")
    while True:
        text = _read_text(os.path.join(root, rel, "cpu.max"))
        if text:
            fields = text.split()
            if len(fields) == 2 and fields[0] != "max":
                limits.append(_quota_cpus(fields[0], fields[1]))
        if not rel:
            break
        rel = os.path.dirname(rel)
    for folder in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        quota = _read_text(os.path.join(root, folder, "cpu.cfs_quota_us"))
        period = _read_text(os.path.join(root, folder, "cpu.cfs_period_us"))
        limits.append(_quota_cpus(quota, period))
    limits = [x for x in limits if x]
    return min(limits) if limits else None


def _physical_core_count():
    """Distinct (physical id, core id) pairs in /proc/cpuinfo, or None."""
    text = _read_text("/proc/cpuinfo")
    if not text:
        return None
    cores, phys = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            phys = value.strip()
        elif key == "core id":
            cores.add((phys, value.strip()))
    return len(cores) or None


def cpu_count(only_physical_cores: bool = False) -> int:
    """Number of CPUs this process may use, as joblib's ``cpu_count``.

    The minimum of ``os.cpu_count()``, the CPU affinity mask
    (``os.sched_getaffinity``), the cgroup v2/v1 CPU quota of the process's
    own cgroup and its parents (``ceil(quota / period)``) and the
    ``PARALLEL_MAX_CPU_COUNT`` (or ``LOKY_MAX_CPU_COUNT``) variable; never
    below 1.  1 when process backends are disabled.

    Parameters
    ----------
    only_physical_cores : bool, default False
        Count physical cores rather than logical CPUs, unless a user limit
        (affinity, quota, variable) is already lower.

    Returns
    -------
    int
        At least 1.
    """
    if not _multiprocessing_available():
        return 1
    total = os.cpu_count() or 1
    limits = [total]
    if hasattr(os, "sched_getaffinity"):
        limits.append(len(os.sched_getaffinity(0)))
    limits.append(_cgroup_cpu_limit())     # 0: no quota
    count = min(x for x in limits if x)
    env_limit = _env("PARALLEL_MAX_CPU_COUNT", "LOKY_MAX_CPU_COUNT")
    if env_limit is not None:
        try:
            count = min(count, int(env_limit))   # 0 or less: 1, as loky
        except ValueError:
            name = "PARALLEL_MAX_CPU_COUNT" if _env(
                "PARALLEL_MAX_CPU_COUNT") is not None else "LOKY_MAX_CPU_COUNT"
            warnings.warn("%s=%r is not an integer; ignored"
                          % (name, env_limit))
    count = max(1, count)
    if only_physical_cores and count >= total:
        count = _physical_core_count() or count
    return count


# ======================================================================
# EXCEPTIONS
# ======================================================================
# TerminatedWorkerError and ParallelTimeoutError derive from classes of
# concurrent.futures and multiprocessing, whose import would triple the
# time of `import parallel`: they are made on first use and reached as
# module attributes (``parallel.TerminatedWorkerError``) through the module
# __getattr__, so imports, isinstance checks and pickling work as usual.
_LAZY_EXCEPTIONS: dict = {}


def _terminated_worker_error():
    """The class TerminatedWorkerError (made on first use)."""
    cls = _LAZY_EXCEPTIONS.get("TerminatedWorkerError")
    if cls is None:
        from concurrent.futures.process import BrokenProcessPool

        class TerminatedWorkerError(BrokenProcessPool):
            """A worker process died while it ran a task (exit, signal, OOM
            kill).

            A :class:`concurrent.futures.process.BrokenProcessPool`, as
            loky's error of the same name.  The message names the exit code
            or signal, e.g. ``SIGKILL(-9)``, and its likely cause.  The pool
            replaces the worker; the next call works.
            """

        cls = _LAZY_EXCEPTIONS.setdefault("TerminatedWorkerError",
                                          _public_class(TerminatedWorkerError))
    return cls


def _parallel_timeout_error():
    """The class ParallelTimeoutError (made on first use)."""
    cls = _LAZY_EXCEPTIONS.get("ParallelTimeoutError")
    if cls is None:
        import multiprocessing

        class ParallelTimeoutError(TimeoutError, multiprocessing.TimeoutError):
            """A task ran longer than ``Parallel(timeout=...)`` seconds.

            Both a builtin :class:`TimeoutError` and a
            :class:`multiprocessing.TimeoutError` (joblib raises the latter).
            """

        cls = _LAZY_EXCEPTIONS.setdefault("ParallelTimeoutError",
                                          _public_class(ParallelTimeoutError))
    return cls


def _public_class(cls):
    """Give a class made inside a function its module-level name."""
    cls.__module__ = __name__
    cls.__qualname__ = cls.__name__
    return cls


class WorkerError(RuntimeError):
    """A worker's exception, result or task could not cross the process
    boundary (it failed to pickle or to unpickle).

    Attributes
    ----------
    type_name : str
        Qualified name of the original exception type (``module.Class``).
    message : str
        ``str()`` of the original exception, computed in the worker.
    remote_traceback : str
        The worker-side traceback text.
    """

    def __init__(self, message, type_name="", remote_message="",
                 remote_traceback=""):
        super().__init__(message)
        self.type_name = type_name
        self.message = remote_message
        self.remote_traceback = remote_traceback


class _ResultPicklingError(WorkerError, TypeError):
    """A task's result could not be pickled in the worker: a WorkerError,
    and a TypeError as the pickling error is (joblib's loky raises it)."""


class _RemoteTraceback(Exception):
    """Carries a worker's traceback text; shown as ``__cause__``."""

    def __init__(self, tb):
        super().__init__(tb)
        self.tb = tb

    def __str__(self):
        return '\n"""\n%s"""' % self.tb


def _attach_remote_traceback(exc, tb_text):
    """Attach a worker's traceback text to ``exc`` without losing its chain.

    Where the worker-side ``__cause__`` survived pickling it is kept, and the
    text goes into a note (Python 3.11+) and ``exc.remote_traceback``;
    otherwise the text becomes the ``__cause__`` (joblib's presentation).
    """
    exc.remote_traceback = tb_text
    if exc.__cause__ is None:
        exc.__cause__ = _RemoteTraceback(tb_text)
    elif hasattr(exc, "add_note"):
        exc.add_note("Worker traceback:\n" + tb_text)
    else:  # Python 3.10: hang the text at the far end of the chain
        last = exc
        while last.__cause__ is not None and last.__cause__ is not exc:
            last = last.__cause__
        last.__cause__ = _RemoteTraceback(tb_text)
    return exc


def _signal_name(code):
    try:
        return "%s(%d)" % (signal.Signals(-code).name, code)
    except (ValueError, TypeError):
        return "EXIT(%s)" % (code,)


def _describe_exit(code):
    """'SIGKILL(-9)' / 'EXIT(3)' plus what commonly causes it."""
    name = _signal_name(code) if code is not None and code < 0 else \
        "EXIT(%s)" % (code,)
    hints = {
        -signal.SIGKILL: "the OS killed it, most often for using too much "
                         "memory (OOM killer), or someone sent SIGKILL",
        -signal.SIGSEGV: "a segmentation fault in native code",
        -signal.SIGBUS: "a bus error, often a full /dev/shm or a truncated "
                        "memory-mapped file",
        -signal.SIGABRT: "an abort() in native code",
    }
    hint = hints.get(code, "the task called os._exit() or sys.exit(), or "
                           "native code ended the process")
    return name, hint


# ======================================================================
# SMALL UTILITIES
# ======================================================================
_SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _safe_str(obj):
    """``str(obj)``, or a placeholder when its ``__str__`` (or the
    ``__repr__`` of what it holds) raises."""
    try:
        return str(obj)
    except Exception as e:
        return "<str() of %s failed: %s>" % (type(obj).__name__,
                                             type(e).__name__)


def _as_int(value):
    """``value`` as an int when it is an integer (Python or numpy, not a
    bool), else None."""
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        return None
    return operator.index(value)


def _float_or_none(text):
    """``float(text)``, or None when ``text`` is not a number."""
    try:
        return float(text)
    except ValueError:
        return None


def _as_seconds(value):
    """``value`` as a float when it is a real number (Python or numpy, not
    a bool), else None."""
    if isinstance(value, bool) or isinstance(value, (str, bytes)):
        return None
    if _as_int(value) is not None or isinstance(value, float):
        return float(value)
    import numbers
    return float(value) if isinstance(value, numbers.Real) else None


def _parse_nbytes(value, name="max_nbytes"):
    """Bytes from an int, a float, None, or a string like '1M', '1.5K'.

    Units are binary (K = 1024); infinity means no limit (None).  Raises
    ValueError naming ``name``.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("%s must be an int, a size string such as '1M', "
                         "or None (got %r)" % (name, value))
    number = _as_int(value)
    if number is None and isinstance(value, float):
        number = value
    if number is not None:
        if number < 0 or number != number:
            raise ValueError("%s must be >= 0 (got %r)" % (name, value))
        return None if number == math.inf else int(number)
    if isinstance(value, str):
        text = value.strip()
        unit = text[-1:].upper()
        try:
            if unit in _SIZE_UNITS:
                number = float(text[:-1])
                if number >= 0:
                    return int(number * _SIZE_UNITS[unit])
            else:
                number = float(text)
                if number >= 0:
                    return int(number)
        except ValueError:
            pass
    raise ValueError("%s must be an int of bytes, a size string such as "
                     "'10G', '500M', '50K', or None (got %r)" % (name, value))


@functools.lru_cache(maxsize=64)
def _eval_pre_dispatch(expression, n_jobs):
    """Value of a pre_dispatch expression such as '2 * n_jobs'.

    Only numbers, ``n_jobs``, ``+ - * / // % **``, unary minus and
    parentheses are allowed; parsed with :mod:`ast`, never ``eval``.
    """
    import ast
    ops = {
        ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv,
        ast.Mod: operator.mod, ast.Pow: operator.pow,
    }
    if len(expression) > _MAX_PRE_DISPATCH_EXPRESSION_LEN:
        raise ValueError("pre_dispatch expression is too long (%d > %d "
                         "characters): %r" % (len(expression),
                                              _MAX_PRE_DISPATCH_EXPRESSION_LEN,
                                              expression))

    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.Name) and node.id == "n_jobs":
            return n_jobs
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub,
                                                                  ast.UAdd)):
            value = walk(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 64:
                raise ValueError("exponent too large")
            value = ops[type(node.op)](left, right)
            if abs(value) > 1e9:
                raise ValueError("value too large")
            return value
        raise ValueError("unsupported element %s" % type(node).__name__)

    try:
        return int(walk(ast.parse(expression, mode="eval")))
    except (SyntaxError, ValueError, ZeroDivisionError, TypeError) as e:
        raise ValueError("pre_dispatch=%r is not an arithmetic expression of "
                         "numbers and n_jobs (%s)" % (expression, e)) from None


def _short_format_time(t):
    """joblib's elapsed-time format: ' %5.1fs' up to 60 s, else '%4.1fmin'."""
    return "%4.1fmin" % (t / 60.0) if t > 60 else " %5.1fs" % t


def _verbosity_filter(index, verbose):
    """True when the progress line of batch ``index`` is skipped (joblib)."""
    if not verbose:
        return True
    if verbose > 10:
        return False
    if index == 0:
        return False
    scale = 0.5 * (11 - verbose) ** 2
    return int(math.sqrt((index + 1) / scale)) == int(math.sqrt(index / scale))


def _qualname(cls):
    module = getattr(cls, "__module__", "")
    name = getattr(cls, "__qualname__", getattr(cls, "__name__", repr(cls)))
    return name if module in ("builtins", "", None) else module + "." + name


# ======================================================================
# TASKS: delayed, batches, auto-batching
# ======================================================================
# The active configuration: a dict of the keys set by parallel_config blocks
# (innermost wins), or None.  Context-local: each thread and each asyncio
# task has its own; batches run under the nested configuration they carry.
_ACTIVE_CONFIG: contextvars.ContextVar[Optional[dict]] = \
    contextvars.ContextVar("parallel_config", default=None)

# id(function) -> (function, wrapper); the function is held so that its id
# stays unique while the entry lives.  The latest entry is also kept apart:
# one identity test serves a loop over one function.
_DELAYED_CACHE: Dict[int, Any] = {}
_DELAYED_CACHE_SIZE = 64
_DELAYED_LAST: tuple = (None, None)
_PULL_CHUNK = 256           # tasks read from the input at a time

_P = ParamSpec("_P")
_R = TypeVar("_R")
DelayedCall = Tuple[Callable[..., _R], Tuple[Any, ...], Dict[str, Any]]


def delayed(function: Callable[_P, _R]) -> Callable[_P, DelayedCall[_R]]:
    """Capture a call without running it, as joblib's ``delayed``.

    ``delayed(f)(*args, **kwargs)`` returns the tuple
    ``(f, args, kwargs)``; :class:`Parallel` runs such tuples.  Nothing is
    validated or pickled here.

    Parameters
    ----------
    function : callable
        The function to call in a worker.

    Returns
    -------
    callable
        Takes ``f``'s arguments and returns ``(f, args, kwargs)``; type
        checkers see ``f``'s parameter and return types.
    """
    # `delayed(f)(x) for x in data` calls delayed once per task: the wrapper
    # of a recent function is reused (keyed by identity, never by ==).
    global _DELAYED_LAST
    entry = _DELAYED_LAST
    if entry[0] is function:
        return entry[1]
    cached = _DELAYED_CACHE.get(id(function))
    if cached is not None and cached[0] is function:
        _DELAYED_LAST = cached
        return cached[1]

    def delayed_function(*args: _P.args, **kwargs: _P.kwargs) -> DelayedCall[_R]:
        return function, args, kwargs
    for name in ("__name__", "__qualname__", "__doc__"):
        try:
            setattr(delayed_function, name, getattr(function, name))
        except (AttributeError, TypeError):
            pass
    delayed_function.__wrapped__ = function  # type: ignore[attr-defined]
    if len(_DELAYED_CACHE) >= _DELAYED_CACHE_SIZE:
        _DELAYED_CACHE.clear()
    _DELAYED_LAST = _DELAYED_CACHE[id(function)] = (function, delayed_function)
    return delayed_function


_FIRST, _SECOND, _THIRD = (operator.itemgetter(0), operator.itemgetter(1),
                          operator.itemgetter(2))


class _Batch:
    """Tasks run together in one worker call, under a nested configuration.

    ``tasks`` holds (function, args, kwargs) triples or, when ``func`` is
    set, the argument tuples of ``func`` called without keywords (the usual
    ``delayed(f)(x) for x in data`` batch, which pickles and runs several
    times faster that way).  Only the tasks and ``config`` travel to
    workers; the other attributes are the caller's bookkeeping.  Calling
    the batch runs the tasks in order and returns their results as a list;
    the first exception propagates.
    """

    __slots__ = ("tasks", "func", "size", "config", "index", "start",
                 "future", "done", "results", "duration_s", "task_started_s",
                 "track_starts", "submitted_s", "result_folder", "running",
                 "keep", "finished", "__weakref__")

    def __init__(self, tasks, config, index=0, start=0, func=None):
        self.tasks = tasks
        self.func = func
        self.size = len(tasks)
        self.config = config
        self.index = index          # batch number within the call
        self.start = start          # index of the first task within the call
        self.future = None
        self.done = False           # its result reached the caller
        self.finished = 0.0         # monotonic time it ended (any thread)
        self.results = None
        self.duration_s = None
        self.task_started_s = None  # monotonic start of the running task
        self.track_starts = False
        self.submitted_s = None
        self.result_folder = None   # where workers may put large results
        self.running = 0            # index in the batch of the running task
        self.keep = None            # what the sent payload needs alive

    def __len__(self):
        return self.size

    def triples(self):
        """The tasks as (function, args, kwargs) triples."""
        if self.func is None:
            return self.tasks
        return [(self.func, args, {}) for args in self.tasks]

    def function(self, i=0):
        """The function of task ``i`` of the batch."""
        return self.func if self.func is not None else self.tasks[i][0]

    def __reduce__(self):
        if self.func is None:   # a thread backend's batch (e.g. for dask)
            self.func = _common_function(self.tasks)
            if self.func is not None:
                self.tasks = list(map(_SECOND, self.tasks))
        if self.func is not None and self.tasks and \
                set(map(len, self.tasks)) == {1}:
            # One argument per call (delayed(f)(x)): the bare arguments
            # pickle 3x and unpickle 5x faster than their 1-tuples.
            return _rebuild_batch, (self.func, list(map(_FIRST, self.tasks)),
                                    self.config, self.result_folder,
                                    self.start, True)
        return _rebuild_batch, (self.func, self.tasks, self.config,
                                self.result_folder, self.start)

    def __call__(self, on_task_start=None):
        token = _ACTIVE_CONFIG.set(self.config)
        t0 = time.perf_counter()
        try:
            func = self.func
            if on_task_start is None and not self.track_starts:
                if func is not None:
                    results = list(itertools.starmap(func, self.tasks))
                    if len(results) < len(self.tasks):
                        # starmap took a task's StopIteration for its end
                        raise RuntimeError(
                            "generator raised StopIteration (task %d of the "
                            "batch, calling %s, raised StopIteration)" % (
                                len(results), getattr(func, "__qualname__",
                                                      func)))
                    return results
                results = []
                append = results.append
                for func, args, kwargs in self.tasks:
                    append(func(*args, **kwargs))
                return results
            results = []
            for i, task in enumerate(self.tasks):
                self.task_started_s = time.monotonic()
                self.running = i
                if on_task_start is not None:
                    on_task_start(i)
                if func is not None:
                    results.append(func(*task))
                else:
                    results.append(task[0](*task[1], **task[2]))
            return results
        finally:
            self.duration_s = time.perf_counter() - t0
            _ACTIVE_CONFIG.reset(token)


def _rebuild_batch(func, items, config, result_folder, start, single=False):
    """Unpickle a batch: ``items`` are (function, args, kwargs) triples, or
    the argument tuples of one ``func`` called without keywords (``single``:
    its only arguments)."""
    if single:
        items = list(zip(items))
    batch = _Batch(items, config, start=start, func=func)
    batch.result_folder = result_folder
    return batch


class _TaskBuffer:
    """Tasks read from the input and not yet in a batch, kept compact.

    Tasks are read ``_PULL_CHUNK`` at a time; a chunk whose tasks all call
    one function without keywords is kept as argument tuples only, so the
    ``(f, args, kwargs)`` triples die young instead of piling up for the
    garbage collector.  Every task is checked to be such a triple (a list
    of three also does, as in joblib).
    """

    def __init__(self, iterator):
        self.iterator = iterator    # None once used up
        self.func = None            # common function of ``items``, or None
        self.items: list = []       # argument tuples, or triples
        self.n_read = 0

    def __len__(self):
        return len(self.items)

    def read(self, n):
        """Read up to ``n`` more tasks (fewer at the end of the input)."""
        while n > 0 and self.iterator is not None:
            k = min(n, _PULL_CHUNK)
            chunk = list(itertools.islice(self.iterator, k))
            if len(chunk) < k:
                self.iterator = None
            n -= len(chunk)
            self._add(chunk)

    def _add(self, chunk):
        if not chunk:
            return
        func = _common_function(chunk)
        if func is not None and (self.func is func or not self.items):
            self.func = func
            self.items.extend(map(_SECOND, chunk))
        else:
            for i, task in enumerate(chunk):
                if not (isinstance(task, (tuple, list)) and len(task) == 3
                        and callable(task[0])):
                    raise TypeError(
                        "Parallel expects delayed calls, e.g. Parallel()("
                        "delayed(f)(x) for x in data), i.e. (function, args, "
                        "kwargs) triples; task %d is %r"
                        % (self.n_read + i, task))
            if self.func is not None:
                self.items = [(self.func, args, {}) for args in self.items]
                self.func = None
            self.items.extend(chunk)
        self.n_read += len(chunk)

    def take(self, n):
        """The first ``n`` buffered tasks, as ``(func, items)``."""
        items, func = self.items[:n], self.func
        del self.items[:n]
        if not self.items:
            self.func = None
        return func, items


def _common_function(tasks):
    """The function every task of ``tasks`` calls without keywords (one
    object, by identity; arguments a tuple and keywords an empty mapping,
    so that malformed tasks fail as in joblib), else None; C-speed checks
    only."""
    try:
        func = tasks[0][0]
        if callable(func) and isinstance(tasks[0], (tuple, list)) and \
                all(map(operator.is_, map(_FIRST, tasks),
                        itertools.repeat(func))) and \
                set(map(len, tasks)) == {3} and \
                list(map(_THIRD, tasks)).count({}) == len(tasks) and \
                all(map(isinstance, map(_SECOND, tasks),
                        itertools.repeat(tuple))):
            return func
    except (TypeError, IndexError, KeyError):
        pass
    return None


class _AutoBatcher:
    """Batch sizes from measured batch durations (joblib's heuristic).

    Batches aim at lasting between ``min_s`` and ``max_s`` seconds; a size
    grows at most ``_MAX_BATCH_GROWTH`` times per step, durations are
    smoothed (0.8 old + 0.2 new), and near the end of an input of known
    length batches shrink so that no worker is left holding the tail.
    """

    def __init__(self, min_s=_MIN_IDEAL_BATCH_DURATION_S,
                 max_s=_MAX_IDEAL_BATCH_DURATION_S, fixed=None):
        self.min_s, self.max_s = min_s, max_s
        self.fixed = fixed
        self.size = fixed or 1
        self.smoothed_s = 0.0
        self.task_s = 0.0      # latest measured duration of one task

    def next_size(self, n_jobs, remaining=None):
        """Size of the next batch; ``remaining`` tasks when known.  The tail
        is cut finer, but never into batches shorter than
        ``_TAIL_SPLIT_MIN_BATCH_S``, where the cost of a batch would
        outweigh a worker left holding the tail."""
        size = self.size
        if self.fixed is None and remaining is not None and self.task_s > 0:
            floor = max(1, round(_TAIL_SPLIT_MIN_BATCH_S / self.task_s))
            size = min(size, max(floor, remaining // (2 * n_jobs)))
        return size

    def record(self, size, duration_s):
        """Take a batch's duration into account; returns a message when the
        size changes (printed at verbose >= 10), else None."""
        if duration_s is not None and size:
            self.task_s = duration_s / size
        if self.fixed is not None or size != self.size or duration_s is None:
            return None
        old = self.smoothed_s
        self.smoothed_s = smoothed = (duration_s if old == 0 else
                                      0.8 * old + 0.2 * duration_s)
        new = size
        if 0 < smoothed < self.min_s:
            ideal = 2 * int(size * self.min_s / smoothed)
            new = max(1, min(_MAX_BATCH_GROWTH * size, ideal))
            word = "fast"
        elif smoothed > self.max_s and size >= 2:
            new = max(1, 2 * int(size * self.min_s / smoothed))
            word = "slow"
        if new == size:
            return None
        self.size, self.smoothed_s = new, 0.0
        return "Batch computation too %s (%ss.) Setting batch_size=%d." % (
            word, smoothed, new)


# ======================================================================
# SHARED MEMORY: temp folder, segments, SharedArray, atomics, reducers
# ======================================================================
def _numpy():
    import numpy
    return numpy


# --- the C helper (_parallel_shm, built from _shm.c by build_shm.py) -------
_SHM_HELPER_NAME = "_parallel_shm"
# 'module' -> loaded module or None, 'error' -> text, 'lock' -> its lock
_SHM_STATE: dict = {"lock": threading.Lock()}


def _import_extension_from(folder):
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(folder, _SHM_HELPER_NAME + suffix)
        if os.path.exists(path):
            package = __name__.rpartition(".")[0]
            name = (package + "." if package else "") + _SHM_HELPER_NAME
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    return None


def _shm_cache_folder():
    here = os.path.dirname(os.path.abspath(__file__))
    import hashlib
    digest = hashlib.sha256()
    for name in ("_shm.c", "build_shm.py"):
        with open(os.path.join(here, name), "rb") as f:
            digest.update(f.read())
    root = _env("PARALLEL_SHM_CACHE", default=os.path.join(
        os.path.expanduser("~"), ".cache", "parallel"))
    tag = "%s-%s" % (sys.implementation.cache_tag, digest.hexdigest()[:16])
    return os.path.join(root, tag)


def build_shm_helper(target_dir: Optional[str] = None) -> str:
    """Compile the C helper ``_parallel_shm`` with cffi and a C compiler.

    Uses ``_shm.c`` and ``build_shm.py`` found next to this module.  Done
    automatically on the first atomic operation when the helper is absent.

    Parameters
    ----------
    target_dir : str, optional
        Folder for the built extension; default: a per-user cache folder
        keyed by a hash of the sources (``PARALLEL_SHM_CACHE``).

    Returns
    -------
    str
        Folder holding the extension.

    Raises
    ------
    RuntimeError
        When the sources, cffi or a working C compiler are missing.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    script = os.path.join(here, "build_shm.py")
    if not (os.path.exists(script) and os.path.exists(
            os.path.join(here, "_shm.c"))):
        raise RuntimeError("cannot build the C helper: _shm.c and build_shm.py "
                           "are not next to %s" % __file__)
    target_dir = target_dir or _shm_cache_folder()
    created = not os.path.isdir(target_dir)
    os.makedirs(target_dir, mode=0o700, exist_ok=True)
    # In a child process: cffi changes the working directory while it builds.
    import subprocess
    try:
        with _START_LOCK:
            done = subprocess.run([sys.executable, script, target_dir],
                                  capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        done = None
        reason = str(e)
    if done is None or done.returncode != 0:
        reason = reason if done is None else (done.stderr.strip().splitlines()
                                              or ["failed"])[-1]
        if created:
            try:
                os.rmdir(target_dir)     # nothing half-built is left behind
            except OSError:
                pass
        raise RuntimeError("cannot build the C helper (%s); install cffi and "
                           "a C compiler, and it is built on first use (or "
                           "run `python build_shm.py` next to parallel.py)"
                           % reason)
    return target_dir


def _shm_helper(build=True):
    """The loaded C helper module, or None (the reason in _SHM_STATE)."""
    module = _SHM_STATE.get("module")
    if module is not None or (not build and "module" in _SHM_STATE):
        return module
    with _SHM_STATE["lock"]:
        if _SHM_STATE.get("module") is not None:
            return _SHM_STATE["module"]
        here = os.path.dirname(os.path.abspath(__file__))
        module = _import_extension_from(here)
        if module is None:
            try:
                module = importlib.import_module(_SHM_HELPER_NAME)
            except ImportError:
                module = None
        if module is not None and not hasattr(module.lib,
                                              "pshm_cas_at_float64"):
            module = None    # built from an older _shm.c: build afresh
        sources = [os.path.join(here, n) for n in ("_shm.c", "build_shm.py")]
        if module is None and build and not all(map(os.path.exists, sources)):
            _SHM_STATE["error"] = (
                "it is not next to %s nor a top-level module, and _shm.c "
                "and build_shm.py are not there to build it: copy them next "
                "to parallel.py (it is then built on first use)" % __file__)
        if module is None and build and "error" not in _SHM_STATE:
            try:
                module = _import_extension_from(_shm_cache_folder())
                if module is None:
                    module = _import_extension_from(build_shm_helper())
            except (OSError, RuntimeError) as e:
                _SHM_STATE["error"] = str(e)
        if module is not None and module.lib.pshm_lock_free() != 1:
            _SHM_STATE["error"] = "the C helper's atomics are not lock-free"
            module = None
        if module is not None or build:
            _SHM_STATE["module"] = module
        return module


def shm_helper_available(build: bool = True) -> bool:
    """Whether the C helper for atomics is available; also readable as
    ``parallel.HAS_SHM_HELPER``.

    Without it atomics raise RuntimeError and everything else works.

    Parameters
    ----------
    build : bool, default True
        Build the helper into the cache folder on first use when it is
        missing (needs cffi and a C compiler; takes seconds once).

    Returns
    -------
    bool
        True when the helper is loaded.
    """
    return _shm_helper(build) is not None


def _require_shm():
    module = _shm_helper()
    if module is None:
        how = ("run `python build_shm.py` next to parallel.py, or reinstall "
               "with cffi and a C compiler")
        error = _SHM_STATE.get("error")
        raise RuntimeError(
            "atomic operations need the C helper %s, which is not available: "
            "%s" % (_SHM_HELPER_NAME, "not found; " + how if error is None
                    else error if "build_shm.py" in error   # says what to do
                    else "%s (to fix: %s, or point PARALLEL_SHM_CACHE at a "
                    "writable folder where it can be built)" % (
                        error.rstrip("."), how)))
    return module


# --- temp folder and the tracker --------------------------------------------
def _temp_root(temp_folder=None):
    """Folder for segments: argument, PARALLEL_TEMP_FOLDER, JOBLIB_TEMP_FOLDER,
    /dev/shm when writable with room, then the system temp folder."""
    folder = temp_folder or _env("PARALLEL_TEMP_FOLDER", "JOBLIB_TEMP_FOLDER")
    if folder:
        return os.path.abspath(os.path.expanduser(os.fspath(folder)))
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK):
        try:
            st = os.statvfs("/dev/shm")
            if st.f_bsize * st.f_bavail > _MIN_DEV_SHM_FREE_BYTES:
                return "/dev/shm"
        except OSError:
            pass
    import tempfile
    return tempfile.gettempdir()


# Runs in its own interpreter: removes what the parent registered once the
# parent's end of its standard input closes (normal exit or SIGKILL).  It
# first detaches (forks, and the first process exits) so that supervisors
# that kill a dead worker's child processes (Ray does) do not kill it too.
_TRACKER_SOURCE = r"""
import os, shutil, signal, sys
if hasattr(os, "fork") and os.fork():
    os._exit(0)
signal.signal(signal.SIGINT, signal.SIG_IGN)
paths = set()
for line in sys.stdin.buffer:
    op = line[:1]
    try:
        path = os.fsdecode(bytes.fromhex(line[1:].strip().decode()))
    except ValueError:    # a torn line: skip it, keep tracking
        continue
    if op == b'+':
        paths.add(path)
    elif op == b'-':
        paths.discard(path)
for path in paths:
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except OSError:
            pass
"""


class _Tracker:
    """Removes this process's segments if it dies before removing them.

    A small interpreter reads '+path' / '-path' lines on its standard input;
    at end of input (this process exited or was killed) it removes every
    path still registered.  Started on the first registration.
    """

    _lock = threading.Lock()
    _proc = None

    @classmethod
    def _send(cls, op, path):
        line = op + os.fsencode(path).hex().encode() + b"\n"
        with cls._lock:
            for _ in range(2):      # a tracker that died is replaced once
                if cls._proc is None:
                    cls._proc = cls._start()
                try:
                    cls._proc.stdin.write(line)
                    cls._proc.stdin.flush()
                    return
                except OSError:     # EPIPE: nobody reads any more
                    cls._proc = None

    @staticmethod
    def _start():
        import subprocess
        with _START_LOCK:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _TRACKER_SOURCE],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True)
        # Its first process exits at once (its child reads): reap it.
        threading.Thread(target=proc.wait, daemon=True,
                         name="parallel-tracker-reaper").start()
        return proc

    @classmethod
    def register(cls, path):
        cls._send(b"+", path)

    @classmethod
    def unregister(cls, path):
        if cls._proc is not None:
            cls._send(b"-", path)

    @classmethod
    def _forget_after_fork(cls):
        # The parent's tracker is not this child's: close the inherited
        # pipe (so only the parent's exit ends the tracker) and keep the
        # Popen object, whose finalizer would warn about a running child.
        # Closed without a flush: the fork may have copied a line another
        # thread was writing.
        cls._lock = threading.Lock()
        proc, cls._proc = cls._proc, None
        if proc is not None:
            try:
                os.close(proc.stdin.fileno())
            except (OSError, ValueError):
                pass
            _FORK_LEFTOVERS.append(proc)


# Objects inherited through fork that must not be finalized in the child.
_FORK_LEFTOVERS: list = []




def _remove_path(path):
    """Remove a segment file or folder; missing is fine.  A folder that a
    worker was still writing into is swept again; whatever cannot be
    removed stays registered, so the tracker removes it at exit."""
    if os.path.isdir(path):
        import shutil
        for _ in range(3):
            shutil.rmtree(path, ignore_errors=True)
            if not os.path.exists(path):
                break
            time.sleep(0.01)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    if not os.path.exists(path):
        _Tracker.unregister(path)


def _space_error(e, folder, nbytes, kind="auto"):
    """An OSError for a segment that does not fit, naming the knobs."""
    knobs = ("pass temp_folder= or set PARALLEL_TEMP_FOLDER / "
             "JOBLIB_TEMP_FOLDER to a folder with room")
    if kind == "auto":
        knobs += ", or max_nbytes=None to disable automatic memmapping"
    err = OSError(e.errno, "cannot write a %d-byte segment in %s (%s); %s"
                  % (nbytes, folder, e.strerror, knobs), folder)
    err.__cause__ = e
    return err


def _create_segment(folder, kind, nbytes):
    """Create an empty segment file of ``nbytes`` bytes; return its path.

    Named ``parallel_<kind>_<pid>_<random>`` (the creating process),
    created with O_EXCL and mode 0600, its space reserved up front (so a
    full folder fails here with ENOSPC or EFBIG, not later with SIGBUS).
    Raises OSError naming the folder.
    """
    path = os.path.join(folder, "%s%s_%d_%s" % (
        _SEGMENT_PREFIX, kind, os.getpid(), os.urandom(8).hex()))
    helper = _shm_helper(build=False)
    try:
        if helper is not None:
            fd = helper.lib.pshm_create(os.fsencode(path), nbytes)
            if fd < 0:
                err = helper.ffi.errno
                raise OSError(err, os.strerror(err), path)
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL
                         | getattr(os, "O_CLOEXEC", 0), 0o600)
            try:
                if nbytes:
                    try:
                        os.posix_fallocate(fd, 0, nbytes)
                    except OSError as e:
                        if e.errno not in (95, 22):  # EOPNOTSUPP, EINVAL
                            raise
                        os.ftruncate(fd, nbytes)
            except BaseException:
                os.close(fd)
                os.unlink(path)
                raise
    except OSError as e:
        if e.errno in (28, 27, 122):  # ENOSPC, EFBIG, EDQUOT
            raise _space_error(e, folder, nbytes, kind) from e
        raise
    os.close(fd)
    return path


class _CallFolder:
    """A call's private folder ``parallel_<pid>_<random>`` (mode 0700),
    created on first use, registered with the tracker, removed by
    :meth:`cleanup`."""

    def __init__(self, root):
        self.root = root
        self.path = None
        self.lock = threading.Lock()

    def get(self):
        """The folder's path, created on first use.  Raises OSError naming
        the temp folder and the knobs that choose it."""
        with self.lock:
            if self.path is None:
                path = os.path.join(self.root, "%s%d_%s" % (
                    _SEGMENT_PREFIX, os.getpid(), os.urandom(8).hex()))
                try:
                    os.makedirs(self.root, exist_ok=True)
                    os.mkdir(path, 0o700)
                except OSError as e:
                    raise OSError(e.errno, "cannot make a folder for shared "
                                  "segments in %s (%s); pass temp_folder= or "
                                  "set PARALLEL_TEMP_FOLDER / "
                                  "JOBLIB_TEMP_FOLDER to a writable folder"
                                  % (self.root, e.strerror), self.root) from e
                try:
                    _Tracker.register(path)
                except BaseException:    # untracked: not left behind
                    os.rmdir(path)
                    raise
                self.path = path
            return self.path

    def cleanup(self):
        """Remove the folder: at once when it is small, else in the
        background (freeing hundreds of MB of tmpfs pages takes tens of
        milliseconds that the caller need not wait for)."""
        with self.lock:
            path, self.path = self.path, None
        if path is None:
            return
        try:
            large = sum(e.stat().st_size for e in os.scandir(path)) >= \
                _BACKGROUND_REMOVAL_MIN_NBYTES
        except OSError:
            large = False
        if large:
            _Reaper.remove(path)
        else:
            _remove_path(path)


class _Reaper:
    """A daemon thread that removes large call folders after the call
    returned.  Drained at exit; the tracker covers a killed process."""

    _lock = threading.Lock()
    _queue: Optional[Any] = None

    @classmethod
    def remove(cls, path):
        import queue
        with cls._lock:
            if cls._queue is None:
                cls._queue = queue.SimpleQueue()
                threading.Thread(target=cls._run, args=(cls._queue,),
                                 daemon=True, name="parallel-reaper").start()
                atexit.register(cls.drain)
            cls._queue.put(path)

    @staticmethod
    def _run(paths):
        while True:
            _remove_path(paths.get())

    @classmethod
    def drain(cls):
        """Remove what is still queued, in the calling thread."""
        import queue
        paths = cls._queue
        while paths is not None:
            try:
                _remove_path(paths.get_nowait())
            except queue.Empty:
                break

    @classmethod
    def _forget_after_fork(cls):
        cls._lock = threading.Lock()
        cls._queue = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_Tracker._forget_after_fork)
    os.register_at_fork(after_in_child=_Reaper._forget_after_fork)
    os.register_at_fork(after_in_child=lambda: _SHM_STATE.update(
        lock=threading.Lock()))


# --- arrays backed by files: references, rebuilding --------------------------
_REBUILT: "weakref.WeakValueDictionary" = weakref.WeakValueDictionary()
# Segments of the SharedArrays this process allocated (and will remove):
# path -> the owning array, while it lives.
_OWNED_SEGMENTS: "weakref.WeakValueDictionary" = weakref.WeakValueDictionary()


def _memmap_root(a):
    """The np.memmap with an open file mapping behind ``a``, or None."""
    np = _numpy()
    b = a
    while isinstance(b, np.ndarray):
        if isinstance(b, np.memmap) and getattr(b, "_mmap", None) is not None \
                and getattr(b, "filename", None):
            return b
        b = b.base
    return None


def _buffer_address(obj):
    np = _numpy()
    return np.frombuffer(obj, dtype=np.uint8, count=0).__array_interface__[
        "data"][0] if len(obj) == 0 else \
        np.frombuffer(obj, dtype=np.uint8).__array_interface__["data"][0]


def _memmap_reference(a, mode=None):
    """Arguments of :func:`_rebuild_memmap` that map ``a`` again in another
    process, or None when ``a`` is not backed by a file mapping."""
    import mmap
    root = _memmap_root(a)
    if root is None or a.size == 0:
        return None
    map_start = root.offset - root.offset % mmap.ALLOCATIONGRANULARITY
    address = a.__array_interface__["data"][0]
    data_offset = map_start + address - _buffer_address(root._mmap)
    mode = mode or root.mode
    mode = "r+" if mode == "w+" else mode
    kind = "shared" if isinstance(a, _shared_array_class()) else "memmap"
    if a.flags.c_contiguous or a.flags.f_contiguous:
        order = "C" if a.flags.c_contiguous else "F"
        return (root.filename, _dtype_token(a.dtype), mode, data_offset,
                a.shape, None, order, kind)
    # Any strides: map the byte span that the array touches.
    low = sum(s * (n - 1) for s, n in zip(a.strides, a.shape) if s < 0)
    high = sum(s * (n - 1) for s, n in zip(a.strides, a.shape) if s > 0)
    span = (low, high + a.itemsize)
    return (root.filename, _dtype_token(a.dtype), mode, data_offset + low,
            a.shape, (a.strides, span[1] - span[0], -low), "K", kind)


def _dtype_token(dtype):
    """What travels for a dtype: its short string when that says it all,
    else the dtype itself (structured dtypes with padding, offsets or
    alignment do not survive ``descr`` or ``str``)."""
    return dtype.str if dtype.names is None and dtype.subdtype is None \
        else dtype


def _rebuild_memmap(filename, dtype, mode, offset, shape, strided, order,
                    kind="memmap"):
    """Map a file region as an np.memmap (or SharedArray); runs in the
    process that unpickles a reference.  Mappings are cached weakly."""
    key = (filename, dtype, mode, offset, shape, strided, order, kind)
    cached = _REBUILT.get(key)
    if cached is not None:
        return cached
    np = _numpy()
    cls = _shared_array_class() if kind == "shared" else np.memmap
    owner = _OWNED_SEGMENTS.get(filename) if mode != "c" else None
    if owner is not None:
        # Back in the process that owns the segment: a view of the owner,
        # which it keeps alive (and with it the segment).
        memory = owner.ravel(order="K").view(np.uint8)
        if strided is None:
            array = np.ndarray.__new__(cls, shape, dtype=np.dtype(dtype),
                                       buffer=memory, offset=offset,
                                       order=order)
        else:
            strides, nbytes, first = strided
            array = np.ndarray.__new__(cls, shape, dtype=np.dtype(dtype),
                                       buffer=memory, offset=offset + first,
                                       strides=strides)
        if mode == "r":
            array.flags.writeable = False
    elif strided is None:
        array = cls.__new__(cls, filename, dtype=dtype, mode=mode,
                            offset=offset, shape=shape, order=order)
    else:
        strides, nbytes, first = strided
        span = np.memmap(filename, dtype=np.uint8, mode=mode, offset=offset,
                         shape=(nbytes,))
        array = np.ndarray.__new__(cls, shape, dtype=np.dtype(dtype),
                                   buffer=span, offset=first, strides=strides)
    _REBUILT[key] = array
    return array


_SHARED_ARRAY_CLASS: list = []


def _release_owned_segment(path):
    _OWNED_SEGMENTS.pop(path, None)
    _remove_path(path)


def _shared_array_class():
    """SharedArray, made on first use so that importing parallel does not
    import numpy (``parallel.SharedArray`` resolves through __getattr__)."""
    if _SHARED_ARRAY_CLASS:
        return _SHARED_ARRAY_CLASS[0]
    np = _numpy()

    class SharedArray(np.memmap):
        """A numpy array in a shared segment that every worker maps writable.

        A :class:`numpy.memmap` subclass.  Pickling sends a reference (file
        name, offset, dtype, shape, strides), never the data, with any
        pickler, so workers of every backend on this host see and update the
        same memory (use the atomics for concurrent read-modify-write).  The
        process that allocated it owns the segment: it is removed when the
        owner's last reference dies, or by the tracker if the owner is
        killed.  Processes that receive it never remove it.  Create with
        :func:`shared_zeros`, :func:`shared_empty` or :func:`shared_array`.
        """

        def __reduce__(self):
            ref = _memmap_reference(self, mode="r+")
            if ref is None:
                return np.asarray(self).__reduce__()
            return _rebuild_memmap, ref

        def __array_wrap__(self, arr, context=None, return_scalar=False):
            arr = np.ndarray.__array_wrap__(self, arr, context, return_scalar)
            if isinstance(arr, np.ndarray) and not np.may_share_memory(arr,
                                                                       self):
                return arr.view(np.ndarray)
            return arr

    SharedArray.__module__ = __name__
    SharedArray.__qualname__ = "SharedArray"
    _SHARED_ARRAY_CLASS.append(SharedArray)
    return SharedArray


def __getattr__(name):
    """Lazy module attributes: SharedArray (needs numpy), HAS_SHM_HELPER,
    TerminatedWorkerError and ParallelTimeoutError (their bases are slow to
    import)."""
    if name == "SharedArray":
        return _shared_array_class()
    if name == "HAS_SHM_HELPER":
        return shm_helper_available()
    if name == "TerminatedWorkerError":
        return _terminated_worker_error()
    if name == "ParallelTimeoutError":
        return _parallel_timeout_error()
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


def shared_empty(shape, dtype="float64", order="C", temp_folder=None):
    """A new uninitialized :class:`SharedArray` of ``shape`` and ``dtype``.

    Parameters
    ----------
    shape : int or tuple of int
        Array shape.
    dtype : numpy dtype-like, default 'float64'
        Element type; object dtypes are rejected.
    order : {'C', 'F'}, default 'C'
        Memory layout.
    temp_folder : str, optional
        Folder for the segment (default: the temp-folder policy, /dev/shm
        when it has room).

    Returns
    -------
    SharedArray
        Writable, shared with every process it is passed to.

    Raises
    ------
    TypeError
        For an object dtype.
    ValueError
        For a negative dimension or a bad ``order``.
    OSError
        When the folder has no room (the message names it).
    """
    np = _numpy()
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise TypeError("shared arrays cannot hold Python objects "
                        "(dtype=%s)" % dtype)
    if order not in ("C", "F"):
        raise ValueError("order must be 'C' or 'F' (got %r)" % (order,))
    shape = (shape,) if _as_int(shape) is not None else tuple(shape)
    shape = tuple(operator.index(n) for n in shape)
    if any(int(n) < 0 for n in shape):
        raise ValueError("shape must not have negative dimensions "
                         "(got %r)" % (shape,))
    nbytes = max(1, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    folder = _temp_root(temp_folder)
    path = _create_segment(folder, "shared", nbytes)
    _Tracker.register(path)
    try:
        cls = _shared_array_class()
        if int(np.prod(shape, dtype=np.int64)) == 0:
            array = np.memmap(path, dtype=np.uint8, mode="r+",
                              shape=(1,))[:0].view(dtype).reshape(shape)
            array = array.view(cls)
        else:
            array = cls.__new__(cls, path, dtype=dtype, mode="r+",
                                shape=shape, order=order)
    except BaseException:
        _remove_path(path)
        raise
    _OWNED_SEGMENTS[path] = array
    weakref.finalize(array, _release_owned_segment, path)
    return array


def shared_zeros(shape, dtype="float64", order="C", temp_folder=None):
    """A new zero-filled :class:`SharedArray`; see :func:`shared_empty`
    for the parameters and errors (new segments read as zeros)."""
    return shared_empty(shape, dtype, order, temp_folder)


def shared_array(a, temp_folder=None):
    """Copy array-like ``a`` into a new :class:`SharedArray` of the same
    shape, dtype and layout; see :func:`shared_empty` for the errors."""
    np = _numpy()
    a = np.asarray(a)
    out = shared_empty(a.shape, a.dtype,
                       _memory_order(a), temp_folder)
    out[...] = a
    return out


# --- automatic memmapping of large arguments (process backends) ----------
def _memory_order(a):
    """'F' for an F-contiguous (and not C-contiguous) array, else 'C'."""
    return "F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C"


def _write_segment(folder, kind, a):
    """Write array ``a`` (its bytes in memory order; a C copy if it is not
    contiguous) into a new segment of ``folder``; return the path.  A
    failure removes the partial file and raises OSError, naming the folder
    when it is out of room."""
    np = _numpy()
    path = _create_segment(folder, kind, a.nbytes)
    try:
        flat = a.ravel(order="K") if (a.flags.c_contiguous or
                                      a.flags.f_contiguous) else \
            np.ascontiguousarray(a).ravel()
        with open(path, "r+b") as f:
            f.write(memoryview(flat.view(np.uint8)))
    except OSError as e:
        _remove_path(path)
        if e.errno in (28, 27, 122):
            raise _space_error(e, folder, a.nbytes, kind) from e
        raise
    except BaseException:
        _remove_path(path)
        raise
    return path


class _ArrayReducer:
    """Decides how each numpy array in a task travels to a worker.

    1. Backed by a file mapping (np.memmap, SharedArray, their slices and
       ndarray views of them, any strides): a reference, no copy.
    2. Else, without object fields and above ``max_nbytes`` bytes (with
       ``mmap_mode`` not None): written once per call into a segment of the
       call's folder and mapped by workers as np.memmap (``mmap_mode``).
    3. Else: pickled normally.
    """

    def __init__(self, max_nbytes, mmap_mode, folder):
        self.max_nbytes = max_nbytes
        self.mmap_mode = mmap_mode
        self.folder = folder
        self.lock = threading.Lock()
        self.dumped = {}   # id(array) -> (array, path); arrays kept alive
        self.kept: list = []   # shared arrays sent by reference, see take_kept

    def reduce(self, a):
        """(callable, args) for the pickler, or None for normal pickling."""
        ref = _memmap_reference(a)
        if ref is not None:
            if ref[0] in _OWNED_SEGMENTS:
                self.kept.append(a)
            return _rebuild_memmap, ref
        if (self.max_nbytes is None or self.mmap_mode is None
                or a.nbytes <= self.max_nbytes or a.dtype.hasobject):
            return None
        with self.lock:
            entry = self.dumped.get(id(a))
            if entry is None:
                path = _write_segment(self.folder.get(), "auto", a)
                # 'r+'/'w+': what the segment held, to tell later which
                # elements the workers changed (see write_back).
                original = _numpy().array(a, order=_memory_order(a)) \
                    if self.mmap_mode in ("r+", "w+") else None
                entry = self.dumped[id(a)] = (a, path, original)
        order = _memory_order(a)
        mode = "r+" if self.mmap_mode == "w+" else self.mmap_mode
        return _rebuild_memmap, (entry[1], _dtype_token(a.dtype), mode, 0,
                                 a.shape, None, order, "memmap")

    def write_back(self):
        """With mmap_mode 'r+' or 'w+', copy the elements that workers
        changed in the auto-memmapped copies back into the caller's arrays
        (joblib's workers write into a copy that nobody reads).  Elements
        are compared bit for bit with the copy as it was written, so the
        caller's own writes during the call to other elements are kept, and
        several views of one array each bring back their own changes."""
        for a, path, original in self.dumped.values():
            if original is None or a.size == 0 or not a.flags.writeable:
                continue
            np = _numpy()
            order, width = _memory_order(a), a.dtype.itemsize
            raw = np.memmap(path, dtype=np.uint8, mode="r")
            changed = (raw.reshape(-1, width) != original.reshape(
                -1, order=order).view(np.uint8).reshape(-1, width)).any(axis=1)
            np.copyto(a, raw.view(a.dtype).reshape(a.shape, order=order),
                      where=changed.reshape(a.shape, order=order))
            del raw

    def take_kept(self):
        """The SharedArrays of this process pickled by reference since the
        last call: their segments must outlive the batch that names them,
        even when nothing else in the caller holds them."""
        kept, self.kept = self.kept, []
        return kept



class _ResultReducer:
    """Decides how each numpy array in a worker's results travels back.

    Arrays backed by the call's temporary inputs go back as plain arrays;
    user memmaps and shared arrays by reference; other arrays of at least
    ``_RESULT_SEGMENT_MIN_NBYTES`` bytes through a segment in the call's
    folder (written once, mapped by the caller, no pipe traffic); the rest
    pickled normally.  Runs in the worker.
    """

    def __init__(self, folder):
        self.folder = folder

    def reduce(self, a):
        root = _memmap_root(a)
        if root is not None and not _is_temporary_segment(a) and \
                root.filename not in _OWNED_SEGMENTS:
            return _rebuild_memmap, _memmap_reference(a)
        # By value: a plain array, a view of the call's temporary input, or
        # a SharedArray this worker allocated (its segment dies with it).
        if (self.folder is None or a.nbytes < _RESULT_SEGMENT_MIN_NBYTES
                or a.dtype.hasobject or a.dtype.names is not None):
            if root is None:
                return None
            return _numpy().asarray(a).__reduce_ex__(pickle.HIGHEST_PROTOCOL)
        try:
            path = _write_segment(self.folder, "result", a)
        except OSError:
            return None   # the call ended, or no room: use the pipe
        return _load_result_segment, (path, a.dtype.str, a.shape,
                                      _memory_order(a))


def _load_result_segment(path, dtype, shape, order):
    """Map a worker's result segment as a plain array and remove its file
    (the mapping keeps the memory until the array dies).  Runs in the
    caller."""
    np = _numpy()
    dtype = np.dtype(dtype)
    count = math.prod(shape)
    memory = _map_without_descriptor(path, count * dtype.itemsize) \
        if count else None
    if memory is None:
        mapped = np.memmap(path, dtype=dtype, mode="r+", shape=shape,
                           order=order)
        mapped.filename = None     # nothing to share by reference any more
        array = mapped.view(np.ndarray)
    else:
        array = np.frombuffer(memory, dtype=dtype, count=count).reshape(
            shape, order=order)
    os.unlink(path)
    return array


def _map_without_descriptor(path, nbytes):
    """A writable shared mapping of the first ``nbytes`` bytes of ``path``
    that keeps no file descriptor open (numpy's memmap keeps one per array,
    and a process may have only ~1024), unmapped when the last user dies;
    None where that is not possible (Python < 3.13 without the C helper)."""
    if sys.version_info >= (3, 13):
        import mmap
        fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        try:
            return mmap.mmap(fd, nbytes,
                             trackfd=False)  # type: ignore[call-arg]
        finally:
            os.close(fd)
    helper = _shm_helper(build=False)
    if helper is None:
        return None
    ffi, lib = helper.ffi, helper.lib
    fd = lib.pshm_open(os.fsencode(path), 1)
    if fd < 0:
        return None
    try:
        address = lib.pshm_map(fd, nbytes, 1)
    finally:
        lib.pshm_close(fd)
    if address == ffi.NULL:
        return None
    address = ffi.gc(address, lambda a, n=nbytes, unmap=lib.pshm_unmap:
                     unmap(a, n))
    return ffi.buffer(address, nbytes)


def _is_temporary_segment(a):
    root = _memmap_root(a)
    return root is not None and os.path.basename(root.filename).startswith(
        _SEGMENT_PREFIX + "auto_")


# Large inputs that dask and Ray workers made read-only (id -> array).
_READ_ONLY_INPUTS: "weakref.WeakValueDictionary[int, Any]" = \
    weakref.WeakValueDictionary()


def _read_only_hint(exc, tasks):
    """Add a note to numpy's read-only error when a worker wrote into an
    automatically memmapped input (joblib's most reported surprise), or
    on a cluster into a large input made read-only (_READ_ONLY_INPUTS);
    ``tasks`` are the batch's (function, args, kwargs), malformed or
    not."""
    if not (isinstance(exc, ValueError) and "read-only" in _safe_str(exc)):
        return exc
    np = sys.modules.get("numpy")

    def read_only_maps(x, depth=0):
        if isinstance(x, np.memmap):
            return x.mode == "r"
        if isinstance(x, np.ndarray) and _READ_ONLY_INPUTS.get(id(x)) is x:
            return not x.flags.writeable
        if depth < 5 and isinstance(x, (list, tuple, dict)):
            items = x.values() if isinstance(x, dict) else x
            return any(read_only_maps(y, depth + 1) for y in items)
        return False

    if np is None or not read_only_maps(tasks):
        return exc
    note = ("parallel: inputs larger than max_nbytes (default '1M') reach "
            "process workers as read-only memory maps (mmap_mode='r'), and "
            "dask and Ray workers as one read-only copy per worker. Pass "
            "mmap_mode='c' for a private writable copy, max_nbytes=None to "
            "send copies instead, or use shared_zeros()/SharedArray for "
            "writes that the caller should see.")
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:
        exc.args = (_safe_str(exc) + "\n" + note,) + exc.args[1:]
    return exc


# --- atomics --------------------------------------------------------------
_ATOMIC_DTYPES = ("int32", "int64", "uint32", "uint64", "float32", "float64")
_OP_ADD, _OP_MAX, _OP_MIN = 0, 1, 2
_TARGETS: dict = {}   # id(array) -> (weakref, info) for validated targets


class _Target:
    __slots__ = ("ptr", "code", "size", "shape", "order", "type", "fns",
                 "lib", "ffi", "flat", "fast_types", "dtype", "flags")


def _atomic_target(a, name):
    """Validate ``a`` as an atomic target and return its cached _Target.

    Raises TypeError (not an array, unsupported dtype), ValueError
    (read-only, unaligned, non-contiguous).  Nothing invalid reaches C.
    """
    entry = _TARGETS.get(id(a))
    if entry is not None and entry[0]() is a:
        t = entry[1]
        if a.flags.num == t.flags and a.shape == t.shape and \
                a.dtype is t.dtype:
            return t
    np = _numpy()
    if not isinstance(a, np.ndarray):
        raise TypeError("%s: the target must be a numpy array (got %s)"
                        % (name, type(a).__name__))
    dtype = a.dtype
    if not dtype.isnative or dtype.name not in _ATOMIC_DTYPES:
        raise TypeError("%s: dtype %s is not supported; use one of %s"
                        % (name, dtype, ", ".join(_ATOMIC_DTYPES)))
    flags = a.flags
    if not flags.writeable:
        raise ValueError("%s: the target array is read-only (a memmap "
                         "opened with mode 'r'?); use a SharedArray or a "
                         "memmap opened 'r+'" % name)
    if not flags.aligned:
        raise ValueError("%s: the target array is not aligned for %s"
                         % (name, dtype))
    if not (flags.c_contiguous or flags.f_contiguous):
        raise ValueError("%s: the target array is not contiguous; atomics "
                         "work on whole C- or F-contiguous arrays (got "
                         "strides %r)" % (name, a.strides))
    helper = _require_shm()
    ffi, lib = helper.ffi, helper.lib
    suffix = dtype.name
    ctype = {"float32": "float", "float64": "double"}.get(
        suffix, suffix + "_t")
    t = _Target()
    # from_buffer wants C order; the transpose of an F-contiguous array is
    # C-contiguous and starts at the same address.
    t.ptr = ffi.cast(ctype + " *", ffi.from_buffer(
        a if flags.c_contiguous else a.T, require_writable=True))
    t.code = _ATOMIC_DTYPES.index(suffix)
    t.size = a.size
    t.shape = a.shape
    t.flat = a.ndim == 1
    t.dtype = a.dtype
    t.fast_types = (float, int) if t.code >= 4 else (int,)
    t.order = "C" if flags.c_contiguous else "F"
    t.flags = flags.num     # writeable, aligned, contiguous: all as checked
    t.type = dtype.type
    t.fns = (getattr(lib, "pshm_fetch_add_at_" + suffix),
             getattr(lib, "pshm_fetch_max_at_" + suffix),
             getattr(lib, "pshm_fetch_min_at_" + suffix),
             getattr(lib, "pshm_cas_at_" + suffix))
    t.lib, t.ffi = lib, ffi
    key = id(a)
    # What the fast path of atomic_add & co. reads, in one tuple unpack.
    _TARGETS[key] = (weakref.ref(a, lambda _, k=key: _TARGETS.pop(k, None)),
                     t, t.size, t.dtype, t.fast_types if t.flat else (),
                     t.flags, t.ptr, t.fns)
    return t


def _flat_scalar_index(t, index, name):
    """Flat element offset of an int or tuple-of-ints index, or None when
    ``index`` is an array form.  Raises IndexError out of bounds."""
    if isinstance(index, bool) or getattr(index, "dtype", None) is not None \
            and index.dtype.kind == "b":
        raise IndexError("%s: index %r is a bool; pass an int" % (name, index))
    if isinstance(index, int) or hasattr(index, "__index__") and \
            getattr(index, "ndim", 0) == 0:
        if len(t.shape) != 1:
            raise IndexError("%s: index %r is a single int for a %d-d array; "
                             "pass a tuple of %d ints" % (
                                 name, index, len(t.shape), len(t.shape)))
        i = operator.index(index)
        n = t.size
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("%s: index %d is out of bounds for size %d"
                             % (name, operator.index(index), n))
        return i
    if isinstance(index, tuple) and all(
            isinstance(x, int) or (hasattr(x, "__index__")
                                   and not getattr(x, "shape", None))
            for x in index):
        if len(index) != len(t.shape):
            raise IndexError("%s: index %r has %d entries for a %d-d array"
                             % (name, index, len(index), len(t.shape)))
        if any(isinstance(x, bool) or getattr(x, "dtype", None) is not None
               and x.dtype.kind == "b" for x in index):
            raise IndexError("%s: index %r holds a bool; pass ints"
                             % (name, index))
        flat = 0
        dims = t.shape if t.order == "C" else t.shape[::-1]
        items = index if t.order == "C" else index[::-1]
        for i, n in zip(items, dims):
            i = operator.index(i)
            j = i + n if i < 0 else i
            if not 0 <= j < n:
                raise IndexError("%s: index %r is out of bounds for shape %r"
                                 % (name, index, t.shape))
            flat = flat * n + j
        return flat
    return None


def _flat_array_index(t, index, name):
    """Flat int64 offsets (contiguous) for the array (scatter) form."""
    np = _numpy()
    if isinstance(index, tuple):
        if len(index) != len(t.shape):
            raise IndexError("%s: index has %d entries for a %d-d array"
                             % (name, len(index), len(t.shape)))
        parts = np.broadcast_arrays(*[np.asarray(i) for i in index])
    else:
        if len(t.shape) != 1:
            raise IndexError("%s: an integer-array index needs a 1-d target; "
                             "pass a tuple of index arrays for a %d-d array"
                             % (name, len(t.shape)))
        parts = [np.asarray(index)]
    fixed = []
    for i, n in zip(parts, t.shape):
        if i.dtype.kind not in "iu" and not (i.size == 0):
            raise IndexError("%s: indices must be integers (got dtype %s)"
                             % (name, i.dtype))
        if i.size:
            low, high = i.min(), i.max()
            if low < -n or high >= n:
                raise IndexError("%s: an index is out of bounds for axis "
                                 "of size %d" % (name, n))
            if low < 0:    # count from the end, in a copy
                i = np.where(i < 0, i.astype(np.int64) + n, i)
        fixed.append(np.asarray(i, dtype=np.int64))
    shape = fixed[0].shape if fixed else ()
    if len(fixed) == 1:
        flat = fixed[0]
    else:
        flat = np.ravel_multi_index(fixed, t.shape, order=t.order)
    return np.ascontiguousarray(flat, dtype=np.int64).reshape(-1), shape


def _scalar_value(t, value, name):
    if t.code >= 4:
        if not hasattr(type(value), "__float__") or \
                isinstance(value, (str, bytes)):    # float("1") is not numpy's
            raise TypeError("%s: value %r is not a number" % (name, value))
        return float(value)
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError("%s: value %r is not an integer, as the %s target "
                        "needs" % (name, value, t.type.__name__)) from None


def _array_values(t, value, shape, name):
    """The values of a scatter update as a contiguous 1-d array of the
    target's dtype: one per index, or a single one that every index uses
    (a Python scalar, or any array of one value)."""
    np = _numpy()
    if isinstance(value, (int, float)):   # Python scalars: as the scalar form
        try:
            return np.array([_scalar_value(t, value, name)], dtype=t.type)
        except OverflowError:
            raise OverflowError("%s: value %r does not fit in %s"
                                % (name, value, t.type.__name__)) from None
    v = np.asarray(value)
    try:
        v = v.astype(t.type, casting="same_kind")
    except TypeError:
        raise TypeError("%s: values of dtype %s cannot be cast to %s"
                        % (name, v.dtype, np.dtype(t.type))) from None
    try:
        spread = np.broadcast_to(v, shape)
    except ValueError:
        raise ValueError("%s: values of shape %s do not broadcast to the index "
                         "shape %s" % (name, v.shape, shape)) from None
    return np.ascontiguousarray(v if v.size == 1 else spread).reshape(-1)


def _make_rmw(op, name):
    """The public read-modify-write function ``name`` (atomic_add, ...).

    Its first lines are the fast path (a validated 1-d target, an int index,
    a Python scalar), kept in the function itself: a second Python call
    would cost as much as the atomic operation.  It re-checks what can
    change in place (dtype, ndim, and in ``flags.num`` the writeable flag
    and the contiguity that strides give).  The size cannot change, nor the
    data move, since numpy refuses to resize an array with a weak
    reference (our cache holds one); so a 1-d target that is still 1-d has
    its shape.
    """
    get_target, get_id = _TARGETS.get, id     # closure cells: no global look-up

    def rmw(a, index, value):
        entry = get_target(get_id(a))
        if entry is not None and index.__class__ is int:
            # No identity test needed: the entry leaves with its array
            # (the weak reference's callback runs before the id is reused).
            _, t, n, dtype, fast_types, flags, ptr, fns = entry
            if value.__class__ in fast_types and -n <= index < n and \
                    a.dtype is dtype and a.ndim == 1 and \
                    a.flags.num == flags:
                try:
                    return fns[op](
                        ptr, index if index >= 0 else index + n, value)
                except OverflowError:
                    raise OverflowError("%s: value %r does not fit in %s" % (
                        name, value, t.type.__name__)) from None
        return _rmw(op, a, index, value, name)
    rmw.__name__ = rmw.__qualname__ = name
    return rmw


def _rmw(op, a, index, value, name):
    t = _atomic_target(a, name)
    i = _flat_scalar_index(t, index, name)
    if i is not None:
        try:
            return t.fns[op](t.ptr, i, _scalar_value(t, value, name))
        except OverflowError:
            raise OverflowError("%s: value %r does not fit in %s"
                                % (name, value, t.type.__name__)) from None
    np = _numpy()
    flat, shape = _flat_array_index(t, index, name)
    values = _array_values(t, value, shape, name)
    previous = np.empty(flat.size, dtype=t.type)
    ffi = t.ffi
    scatter = t.lib.pshm_scatter_scalar if values.size == 1 and \
        flat.size != 1 else t.lib.pshm_scatter
    scatter(op, t.code, t.ptr, ffi.cast("int64_t *", ffi.from_buffer(flat)),
            ffi.from_buffer(values), ffi.from_buffer(previous), flat.size)
    return previous.reshape(shape)


atomic_add = _make_rmw(_OP_ADD, "atomic_add")
atomic_add.__doc__ = """Atomically add ``value`` at ``index`` of ``a``; return the previous
    value(s).

    Sequentially consistent and lock-free; works across processes on shared
    arrays (:class:`SharedArray`, memmaps opened 'r+'/'w+') and across
    threads on any array.  Integers wrap around as numpy's do; floats add
    with a compare-and-swap loop.

    Parameters
    ----------
    a : numpy.ndarray
        Writable, aligned, C- or F-contiguous array of int32, int64, uint32,
        uint64, float32 or float64.
    index : int, tuple of int, integer array or tuple of integer arrays
        An element (a tuple for n-d arrays), or many (scatter form, any
        shape, duplicates allowed: every update lands; runs in C with the
        GIL released).  Negative indices count from the end, as numpy's.
    value : scalar or array_like
        Broadcast against the index shape; cast with ``same_kind`` rules.

    Returns
    -------
    int, float or numpy.ndarray
        The value found before the update (a Python scalar for a scalar
        index), or the values found, shaped like the index (array form).

    Raises
    ------
    TypeError
        Unsupported dtype or value type.
    IndexError
        Index out of bounds or of the wrong shape.
    ValueError
        Read-only, unaligned or non-contiguous target.
    RuntimeError
        The C helper is not built (the message says how to build it).
    """


atomic_max = _make_rmw(_OP_MAX, "atomic_max")
atomic_max.__doc__ = """Atomically store ``max(a[index], value)``; return the previous
    value(s).  Parameters, returns and errors as :func:`atomic_add`.  A NaN
    ``value`` is never stored."""


atomic_min = _make_rmw(_OP_MIN, "atomic_min")
atomic_min.__doc__ = """Atomically store ``min(a[index], value)``; return the previous
    value(s).  Parameters, returns and errors as :func:`atomic_add`.  A NaN
    ``value`` is never stored."""


def compare_and_swap(a, index, expected, desired):
    """Atomically replace ``a[index]`` by ``desired`` where it equals
    ``expected`` (bitwise); return the value(s) found.

    The swap happened exactly where the returned value equals ``expected``.
    Parameters and errors as :func:`atomic_add`; ``expected`` and
    ``desired`` broadcast against the index shape.

    Returns
    -------
    int, float or numpy.ndarray
        The value found (a Python scalar for a scalar index), or the values
        found, shaped like the index (array form).
    """
    name = "compare_and_swap"
    t = _atomic_target(a, name)
    i = _flat_scalar_index(t, index, name)
    if i is not None:
        return t.fns[3](t.ptr, i, _scalar_value(t, expected, name),
                        _scalar_value(t, desired, name))
    np = _numpy()
    flat, shape = _flat_array_index(t, index, name)
    exp = _array_values(t, expected, shape, name)
    des = _array_values(t, desired, shape, name)
    found = np.empty(flat.size, dtype=t.type)
    ffi = t.ffi
    t.lib.pshm_scatter_cas(t.code, t.ptr, ffi.cast("int64_t *",
                                                   ffi.from_buffer(flat)),
                           ffi.from_buffer(exp), ffi.from_buffer(des),
                           ffi.from_buffer(found), flat.size)
    return found.reshape(shape)


class AtomicView:
    """Fast atomic access to one array by flat index (a bound accessor).

    Validates the array once; each call then does one bounds check and one
    C call.  Indices are flat offsets in memory order; values and results
    are Python scalars.  The view keeps the array (and so its memory)
    alive; changes made to the array in place afterwards (its dtype, shape,
    strides or writeable flag) are not seen: make a new view.

    Parameters
    ----------
    a : numpy.ndarray
        As for :func:`atomic_add`.

    Attributes
    ----------
    add(i, value), max(i, value), min(i, value) : callable
        Atomically add ``value`` at flat index ``i`` (store the maximum,
        the minimum); return the previous value.
    compare_and_swap(i, expected, desired) : callable
        Store ``desired`` at flat index ``i`` if it holds ``expected``;
        return the value found.

    Raises
    ------
    TypeError, ValueError, RuntimeError
        As :func:`atomic_add`, at construction.  Calls raise IndexError for
        an index out of bounds or a bool, TypeError for a non-integer index
        or a value the dtype cannot take, OverflowError for one too large.

    Examples
    --------
    >>> import numpy as np
    >>> counts = np.zeros(4, dtype=np.int64)
    >>> view = AtomicView(counts)
    >>> view.add(1, 5), view.add(1, 2), int(counts[1])
    (0, 5, 7)
    """

    __slots__ = ("array", "_size", "add", "max", "min", "compare_and_swap")
    add: Callable[[int, Any], Any]
    max: Callable[[int, Any], Any]
    min: Callable[[int, Any], Any]
    compare_and_swap: Callable[[int, Any, Any], Any]

    def __init__(self, a):
        t = _atomic_target(a, "AtomicView")
        self.array = a
        self._size = t.size
        # Closures, not methods: no attribute look-up in the hot path.
        self.add, self.max, self.min = (
            self._update(name, fn, t.ptr)
            for name, fn in zip(("add", "max", "min"), t.fns))
        self.compare_and_swap = self._swap(t.fns[3], t.ptr)

    def _update(self, name, fn, ptr):
        size, index, refused = self._size, self._index, self._value_error

        def update(i, value):
            # Python ints in bounds go straight to C; anything else is
            # checked (bools and floats refused, numpy integers converted).
            if not (i.__class__ is int and 0 <= i < size):
                i = index(i)
            try:
                return fn(ptr, i, value)
            except (TypeError, OverflowError) as e:
                raise refused(name, (value,), e) from None
        update.__name__ = update.__qualname__ = name
        return update

    def _swap(self, fn, ptr):
        size, index, refused = self._size, self._index, self._value_error

        def compare_and_swap(i, expected, desired):
            if not (i.__class__ is int and 0 <= i < size):
                i = index(i)
            try:
                return fn(ptr, i, expected, desired)
            except (TypeError, OverflowError) as e:
                raise refused("compare_and_swap", (expected, desired),
                              e) from None
        return compare_and_swap

    def _index(self, i):
        if isinstance(i, bool):
            raise IndexError("AtomicView: index %r is a bool; pass an int"
                             % (i,))
        n = self._size
        try:
            j = operator.index(i)
        except TypeError:
            raise TypeError("AtomicView: index %r is not an integer"
                            % (i,)) from None
        j = j + n if j < 0 else j
        if not 0 <= j < n:
            raise IndexError("index %d is out of bounds for size %d" % (i, n))
        return j

    def _value_error(self, method, values, error):
        """The error for values that C refused, naming them and the dtype."""
        shown = "value %r" % (values[0],) if len(values) == 1 else \
            "values %r" % (values,)
        if isinstance(error, OverflowError):
            return OverflowError("AtomicView.%s: %s do%s not fit in %s" % (
                method, shown, "es" if len(values) == 1 else "",
                self.array.dtype))
        if self.array.dtype.kind == "f":
            need = "a number" if len(values) == 1 else "numbers"
        else:
            need = "an integer" if len(values) == 1 else "integers"
        return TypeError("AtomicView.%s: %s must be %s for the %s array"
                         % (method, shown, need, self.array.dtype))


# ======================================================================
# SERIALIZATION: pickler choice, wrap_non_picklable_objects
# ======================================================================
_PICKLER_CLASSES: dict = {}


class _NeedsCloudpickle(Exception):
    """Raised by the fast pickler on an object that must go by value."""


def _pickled_by_value(obj):
    """True for a function or class that a worker could not import by name:
    defined in __main__, inside a function, as a lambda, or in a module that
    cloudpickle was told to pickle by value."""
    module_name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module_name or module_name == "__main__" or not qualname or \
            "<" in qualname:
        return True
    module = sys.modules.get(module_name)
    if module is None:
        return True
    cloudpickle = sys.modules.get("cloudpickle")
    if cloudpickle is not None:
        registered = getattr(getattr(cloudpickle, "cloudpickle", cloudpickle),
                             "_PICKLE_BY_VALUE_MODULES", ())
        if any(module_name == m or module_name.startswith(m + ".")
               for m in registered):
            return True
    found = module
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found is not obj


def _pickler_class(by_value=False):
    """The task pickler, extended with the array reducers.

    By default the C pickler of the standard library, which refuses (with
    _NeedsCloudpickle) functions and classes that must travel by value; then
    ``_pickler_class(by_value=True)``, cloudpickle's, is used for that
    object graph.  PARALLEL_PICKLER / LOKY_PICKLER name another module whose
    ``Pickler`` is used for everything.
    """
    name = _env("PARALLEL_PICKLER", "LOKY_PICKLER")
    key = name or ("cloudpickle" if by_value else "")
    cls = _PICKLER_CLASSES.get(key)
    if cls is not None:
        return cls
    fast = False
    if key == "cloudpickle":
        import cloudpickle  # type: ignore
        base = cloudpickle.CloudPickler
    elif not key:
        base, fast = pickle.Pickler, True
    else:
        try:
            base = importlib.import_module(key).Pickler
        except (ImportError, AttributeError) as e:
            raise ValueError("PARALLEL_PICKLER=%r: cannot import a Pickler "
                             "class from module %r (%s)" % (key, key, e))

    class _TaskPickler(base):
        array_reducer = None   # an _ArrayReducer in the caller; None in workers
        main_names = None   # see _dumps

        def reducer_override(self, obj):
            np = sys.modules.get("numpy")
            if np is not None and isinstance(obj, np.ndarray):
                # Other subclasses (masked arrays, recarrays, matrices, the
                # user's) pickle as they define, keeping class and extras.
                if type(obj) is np.ndarray or isinstance(obj, np.memmap):
                    reduced = _reduce_array(obj, self.array_reducer)
                    if reduced is not None:
                        return reduced
            elif fast and isinstance(obj, (types.FunctionType, type)) and \
                    _pickled_by_value(obj) and not (
                        self.main_names is not None and
                        _named_in_main(obj, self.main_names)):
                raise _NeedsCloudpickle(obj)
            elif fast and isinstance(obj, types.ModuleType):
                raise _NeedsCloudpickle(obj)   # by name, as cloudpickle does
            parent = getattr(super(), "reducer_override", None)
            return parent(obj) if parent is not None else NotImplemented

    _PICKLER_CLASSES[key] = _TaskPickler
    return _TaskPickler


def _reduce_array(a, array_reducer):
    """Reduction of an array crossing to another process, or None: the
    caller's _ArrayReducer for tasks, a worker's _ResultReducer for results
    (without a folder when none is given)."""
    return (array_reducer or _ResultReducer(None)).reduce(a)


def _named_in_main(obj, main_names):
    """True for a function or class of ``__main__`` that ``main_names``
    (``__main__``'s globals when the workers were forked) holds by name."""
    qualname = getattr(obj, "__qualname__", "")
    return getattr(obj, "__module__", None) == "__main__" and \
        main_names.get(qualname) is obj and \
        getattr(sys.modules.get("__main__"), qualname, None) is obj


def _dumps(obj, array_reducer=None, main_names=None):
    """Pickle ``obj`` for another process (see :func:`_pickler_class`).

    ``main_names``: for workers forked from this process for one call (the
    'multiprocessing' backend), ``__main__``'s globals at the fork; the
    functions and classes among them go by name, as the standard library's
    pickle sends them, so that they share the worker's ``__main__``
    globals (an initializer setting a global that tasks read, as in
    joblib).  Those defined or redefined since go by value.
    """
    by_value = False
    while True:
        buffer = io.BytesIO()
        pickler = _pickler_class(by_value)(buffer,
                                           protocol=pickle.HIGHEST_PROTOCOL)
        pickler.array_reducer = array_reducer
        pickler.main_names = main_names
        try:
            pickler.dump(obj)
        except _NeedsCloudpickle:
            by_value = True
            continue
        return buffer.getvalue()


class _CloudpickledObjectWrapper:
    """Pickles the wrapped object with cloudpickle, whatever the pickler."""

    def __init__(self, obj, keep_wrapper=True):
        self._obj = obj
        self._keep_wrapper = keep_wrapper

    def __reduce__(self):
        import cloudpickle
        return _rebuild_wrapped, (cloudpickle.dumps(self._obj),
                                  self._keep_wrapper)

    def __getattr__(self, name):
        if name in ("_obj", "_keep_wrapper"):
            raise AttributeError(name)
        return getattr(self._obj, name)


class _CallableObjectWrapper(_CloudpickledObjectWrapper):
    def __call__(self, *args, **kwargs):
        return self._obj(*args, **kwargs)


def _wrap(obj, keep_wrapper):
    cls = _CallableObjectWrapper if callable(obj) else \
        _CloudpickledObjectWrapper
    return cls(obj, keep_wrapper)


def _rebuild_wrapped(data, keep_wrapper):
    obj = pickle.loads(data)
    return _wrap(obj, keep_wrapper) if keep_wrapper else obj


def wrap_non_picklable_objects(obj, keep_wrapper: bool = True):
    """Make ``obj`` picklable by any pickler by cloudpickling it, as joblib's
    function of the same name.

    Useful with ``PARALLEL_PICKLER=pickle`` (fast pickling of everything
    else) for lambdas and functions defined in ``__main__``.  Usable as a
    decorator on functions and classes (instances of a decorated class are
    wrapped).

    Parameters
    ----------
    obj : object
        Function, class or other object.
    keep_wrapper : bool, default True
        When False, unpickling gives back the bare object.

    Returns
    -------
    object
        A wrapper that proxies attributes (and calls) to ``obj``.
    """
    if isinstance(obj, type):
        class CloudpickledClassWrapper(_CloudpickledObjectWrapper):
            def __init__(self, *args, **kwargs):
                super().__init__(obj(*args, **kwargs), keep_wrapper)
        CloudpickledClassWrapper.__name__ = obj.__name__
        CloudpickledClassWrapper.__qualname__ = obj.__qualname__
        return CloudpickledClassWrapper
    return _wrap(obj, keep_wrapper)


def _pack_exception(exc, depth=0):
    """A picklable description of an exception and its chain (worker side):
    the pickled object where it pickles, its type name, message and
    traceback text always."""
    try:
        data = _dumps(exc)
        pickle.loads(data)   # catch exceptions that pickle but cannot load
        fail = None
    except Exception as e:
        data, fail = None, "%s: %s" % (type(e).__name__, _safe_str(e))
    packed = {
        "data": data, "fail": fail, "type": _qualname(type(exc)),
        "message": _safe_str(exc),
        "traceback": "".join(__import__("traceback").format_exception(
            type(exc), exc, exc.__traceback__, chain=False)),
        "cause": None, "context": None,
        "suppress": exc.__suppress_context__,
    }
    if depth < 8:
        if exc.__cause__ is not None:
            packed["cause"] = _pack_exception(exc.__cause__, depth + 1)
        elif exc.__context__ is not None and not exc.__suppress_context__:
            packed["context"] = _pack_exception(exc.__context__, depth + 1)
    return packed


def _unpack_exception(packed, top=True):
    """Rebuild a worker's exception in the caller (chain included), or a
    WorkerError that names its type and message when it cannot load."""
    exc = None
    fail = packed["fail"]
    if packed["data"] is not None:
        try:
            exc = pickle.loads(packed["data"])
        except Exception as e:
            fail = "%s: %s" % (type(e).__name__, _safe_str(e))
    if exc is None:
        message = "the worker raised %s: %s, but that exception could not " \
            "be sent to the caller (%s)" % (packed["type"],
                                             packed["message"], fail)
        import builtins
        builtin = getattr(builtins, packed["type"], None)
        if isinstance(builtin, type) and issubclass(builtin, Exception):
            # A builtin exception keeps its type (a RecursionError whose
            # pickling recursed too deep, say), as callers catch it so.
            try:
                exc = builtin(message)
            except Exception:   # it takes other arguments
                exc = None
        if exc is None:
            exc = WorkerError(message, packed["type"], packed["message"],
                              packed["traceback"])
    if packed["cause"] is not None:
        exc.__cause__ = _unpack_exception(packed["cause"], top=False)
    elif packed["context"] is not None:
        exc.__context__ = _unpack_exception(packed["context"], top=False)
    exc.__suppress_context__ = packed["suppress"]
    if top:
        text = _full_traceback_text(packed)
        _attach_remote_traceback(exc, text)
    return exc


def _full_traceback_text(packed):
    parts = []
    while packed is not None:
        parts.append(packed["traceback"])
        packed = packed["cause"] or packed["context"]
    return "\n".join(reversed(parts))


# ======================================================================
# WORKER POOL: the reusable process pool and the worker main loop
# ======================================================================
#   caller threads                 manager thread (one per pool)       workers
#   --------------                 -----------------------------       -------
#   submit(client, batch) -> queue -> idle worker? -> send_bytes ---> run batch
#   callback(kind, payload) <------ recv_bytes <------------------- results
#   kill(client)  -> SIGKILL        sentinel fires -> crash error    (dies)
#
# Messages are bytes: an 9-byte header (kind, batch id) and a pickle.
# Workers never re-import the caller's __main__: tasks carry functions
# defined there by value (cloudpickle).

_MSG_RUN, _MSG_START, _MSG_RESULT, _MSG_ERROR = b"R", b"S", b"D", b"E"


def _worker_send(conn, kind, batch_id, payload):
    conn.send_bytes(kind + batch_id.to_bytes(8, "little") + payload)


def _watch_parent(parent_pid, caller_pid):
    """Exit when the parent or the calling process dies (runs in a daemon
    thread of each worker; with forkserver the parent is the fork server,
    which may outlive the caller)."""
    while True:
        time.sleep(_PARENT_POLL_INTERVAL_S)
        if os.getppid() != parent_pid:
            os._exit(1)
        try:
            os.kill(caller_pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except OSError:
            pass


def _limit_native_threads(env):
    """Apply thread limits to native pools already loaded (fork start)."""
    if "numpy" not in sys.modules:
        return
    try:
        from threadpoolctl import threadpool_limits  # type: ignore
    except ImportError:
        return
    threadpool_limits(int(env["OMP_NUM_THREADS"])) if "OMP_NUM_THREADS" in \
        env else None


# Set in worker processes: 'loky' or 'multiprocessing' (the backend whose
# pool started this process); nested process-backend calls read it.
_WORKER_KIND: List[Optional[str]] = [None]


def _worker_main(conn, env, init_payload, caller_pid, kind="loky"):
    """Main loop of a worker process.  This runs in the worker process.

    Sets the thread-limit variables before any task imports numpy, ignores
    SIGINT (the caller decides what stops), exits when the parent dies,
    runs the pickled ``(initializer, initargs)`` if any, then runs batches
    until it reads an empty message or end of file.  A failing initializer
    is reported as the error of the first batch, then the worker exits.
    """
    _WORKER_KIND[0] = kind
    # The atexit handlers of the process this one was forked from are not
    # its own (a forked caller's would run once per worker): only those
    # registered from here on run at exit (see _exit_like_an_interpreter).
    atexit._clear()
    if "logging" in sys.modules:
        atexit.register(sys.modules["logging"].shutdown)
    # weakref.finalize registers its exit hook once per process: let it
    # register again, without the caller's finalizers (a forked caller's
    # would remove its own temporary folders at this worker's exit).
    finalize = weakref.finalize
    for info in list(getattr(finalize, "_registry", {}).values()):
        info.atexit = False
    finalize._registered_with_atexit = False  # type: ignore[attr-defined]
    os.environ.update(env)
    _limit_native_threads(env)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not os.environ.get("PYTHONFAULTHANDLER"):
        import faulthandler
        faulthandler.enable()
    threading.Thread(target=_watch_parent, args=(os.getppid(), caller_pid),
                     daemon=True).start()
    init_error = None
    if init_payload is not None:
        initializer = None
        try:
            initializer, initargs = pickle.loads(init_payload)
            initializer(*initargs)
        except BaseException as e:
            init_error = WorkerError(
                "the initializer %s failed in a worker: %s: %s" % (
                    getattr(initializer, "__qualname__", initializer),
                    type(e).__name__, _safe_str(e)), _qualname(type(e)),
                _safe_str(e), __import__("traceback").format_exc())
    try:
        while True:
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):
                return
            if not data:
                return
            batch_id = int.from_bytes(data[1:9], "little")
            if init_error is not None:
                _worker_send(conn, _MSG_ERROR, batch_id,
                             pickle.dumps(_pack_exception(init_error)))
                return
            track = data[9:10] == b"1"
            try:
                _run_batch_in_worker(conn, batch_id, track,
                                     memoryview(data)[10:])
            except (OSError, EOFError):   # the caller is gone
                return
    finally:
        _exit_like_an_interpreter()


def _exit_like_an_interpreter():
    """What a normal interpreter exit does and the end of a multiprocessing
    child (``os._exit``) skips: run the atexit handlers registered in this
    worker (by tasks, the initializer or the modules they imported;
    logging's flush among them), as loky's workers do, then flush the
    standard streams.  This runs in the worker process."""
    try:
        atexit._run_exitfuncs()
    except BaseException:      # reported by atexit itself
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass


def _run_batch_in_worker(conn, batch_id, track, payload):
    """Unpickle, run and answer one batch.  This runs in the worker process."""
    def on_start(i):
        _worker_send(conn, _MSG_START, batch_id, i.to_bytes(4, "little"))
    kind, data = _run_payload(payload, on_start if track else None)
    _worker_send(conn, kind, batch_id, data)


# Set while a worker thread unpickles a task: a module imported for it that
# starts a process-backed call at import time would start workers that
# import it again, without end.
_LOADING_TASK = threading.local()


class _ReadOnlyArgument:
    """An array argument that unpickles read-only (see _ClusterBackend)."""

    __slots__ = ("array",)

    def __init__(self, array):
        self.array = array

    def __reduce__(self):
        return _read_only_array, (self.array,)


def _read_only_array(array):
    array.flags.writeable = False     # its own, freshly unpickled copy
    _READ_ONLY_INPUTS[id(array)] = array
    return array


class _SharedSlot:
    """Stands, in a pickled batch, for an argument that travels once per
    call (dask's scatter, Ray's object store): ``index`` into the pickled
    arguments handed to :func:`_run_shared_payload`."""

    __slots__ = ("index",)

    def __init__(self, index):
        self.index = index

    def __reduce__(self):
        return _SharedSlot, (self.index,)


def _fill_shared_slots(batch, shared):
    """Put the ``shared`` arguments in place of the batch's _SharedSlot
    markers: pickled bytes are unpickled once per batch (tasks get their
    own copies, as with the other arguments); an array (one copy per
    worker, shared by its tasks) is given read-only, as an auto-memmapped
    input is on the process backends."""
    def value(v):
        if isinstance(v, bytes):
            return pickle.loads(v)
        return _read_only_array(v.view())
    values = [value(v) for v in shared]

    def fill(args):
        return tuple(values[a.index] if a.__class__ is _SharedSlot else a
                     for a in args)
    if batch.func is not None:
        batch.tasks = [fill(args) for args in batch.tasks]
    else:
        batch.tasks = [
            (f, fill(args), {k: values[v.index] if v.__class__ is _SharedSlot
                             else v for k, v in kwargs.items()})
            if isinstance(args, tuple) and isinstance(kwargs, dict)
            else (f, args, kwargs) for f, args, kwargs in batch.tasks]


def _run_shared_payload(payload, *shared):
    """:func:`_run_payload` of a batch whose large arguments travel apart
    (pickled, or arrays), in the order of their _SharedSlot indices.
    This runs in a dask or Ray worker."""
    return _run_payload(payload, shared=shared)


def _run_payload(payload, on_task_start=None, shared=()):
    """Unpickle and run a pickled batch; return ``(_MSG_RESULT, pickled
    (duration_s, results))`` or ``(_MSG_ERROR, pickled packed exception)``
    (see :func:`_pack_exception`).  This runs in a worker (of a pool, or
    of dask or Ray)."""
    batch = None
    try:
        _LOADING_TASK.active = True
        try:
            loaded = pickle.loads(payload)
            if shared:
                _fill_shared_slots(loaded, shared)
            batch = loaded
        finally:
            _LOADING_TASK.active = False
        results = batch(on_task_start=on_task_start)
    except BaseException as e:
        if batch is None:
            e = WorkerError("the task could not be unpickled in the worker "
                            "(%s: %s); %s" % (
                                type(e).__name__, _safe_str(e),
                                "a shared array or memmap it names was "
                                "removed before the worker opened it"
                                if isinstance(e, FileNotFoundError) else
                                "its arguments must be picklable and their "
                                "modules importable there"))
        elif batch.tasks:
            e = _read_only_hint(e, batch.triples())
        return _MSG_ERROR, pickle.dumps(_pack_exception(e))
    try:
        return _MSG_RESULT, _dumps((batch.duration_s, results),
                                   _ResultReducer(batch.result_folder))
    except Exception as e:
        index = _first_unpicklable(results)
        func = batch.function(index) if index is not None else None
        err = _ResultPicklingError(
            "the result of task %s (%s) could not be pickled to send it back "
            "to the caller: %s: %s" % (
                None if index is None else batch.start + index,
                getattr(func, "__qualname__", func), type(e).__name__,
                _safe_str(e)), _qualname(type(e)), _safe_str(e),
            __import__("traceback").format_exc())
        return _MSG_ERROR, pickle.dumps(_pack_exception(err))


def _first_unpicklable(results):
    for i, r in enumerate(results):
        try:
            _dumps(r)
        except Exception:
            return i
    return None


def _pickle_batch(batch, reducer, main_names=None):
    """The batch as bytes for a worker (see :func:`_dumps`), its tasks then
    dropped (they die young) and the shared arrays that the bytes name kept
    on ``batch.keep`` until the batch ends.  Raises PicklingError naming
    the tasks, or OSError (a full temp folder)."""
    try:
        payload = _dumps(batch, reducer, main_names)
    except OSError:
        raise
    except Exception as e:
        raise pickle.PicklingError(
            "could not pickle the task to send it to the workers: batch "
            "of tasks %d..%d, calling %s (%s: %s)" % (
                batch.start, batch.start + len(batch) - 1,
                getattr(batch.function(), "__qualname__",
                        batch.function()), type(e).__name__,
                _safe_str(e))) from e
    batch.tasks = ()
    batch.keep = reducer.take_kept()
    return payload


def _outcome(kind, data):
    """The results list of what :func:`_run_payload` returned, or raise the
    worker's exception (rebuilt in the caller)."""
    if kind == _MSG_RESULT:
        duration_s, results = pickle.loads(data)
        return results
    raise _unpack_exception(pickle.loads(data))


class _NoImportInFlight:
    """``with _NoImportInFlight():`` holds the import lock, once no other
    thread is importing a module.  A child forked while another thread
    holds a module's import lock inherits it held and hangs on its first
    import of that module (say, cloudpickle, imported on first use by a
    call in another thread).  Waits at most ``_FORK_IMPORT_WAIT_S``
    seconds, then goes on."""

    def __enter__(self):
        import _imp
        from importlib import _bootstrap
        me = threading.get_ident()
        deadline = time.monotonic() + _FORK_IMPORT_WAIT_S
        while True:
            _imp.acquire_lock()    # no module lock is handed out meanwhile
            busy = any(getattr(ref(), "owner", None) not in (None, me)
                       for ref in list(getattr(_bootstrap, "_module_locks",
                                               {}).values()))
            if not busy or time.monotonic() > deadline:
                return self
            _imp.release_lock()
            time.sleep(0.001)

    def __exit__(self, *exc_info):
        import _imp
        _imp.release_lock()


def _start_process(ctx, target, args):
    """Start ``target(conn, *args)`` in a worker process that does not re-run
    the caller's __main__; return (process, the caller's end of conn).

    spawn and forkserver re-import the main module in every child (and crash
    on scripts read from standard input, or respawn forever without a main
    guard).  During ``start()`` the main module is replaced by an empty one,
    so the child has nothing to re-import; tasks bring what they need.
    """
    # One start at a time, the worker's pipe made in the same critical
    # section: a concurrent fork would inherit the other worker's pipe and
    # sentinel and hide its death.
    with _START_LOCK:
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        process = ctx.Process(target=target, args=(child_conn,) + args,
                              name="parallel-worker")
        if ctx.get_start_method() == "fork":
            with _NoImportInFlight():
                process.start()
        else:
            main = sys.modules.get("__main__")
            sys.modules["__main__"] = types.ModuleType("__main__")
            try:
                process.start()
            finally:
                sys.modules["__main__"] = main
        child_conn.close()
    return process, parent_conn


class _Client:
    """One call's (or one ``with Parallel`` block's) use of a pool."""

    def __init__(self, max_workers):
        self.max_workers = max_workers
        self.running = 0
        self.closed = False


class _PoolWorker:
    __slots__ = ("process", "conn", "job", "idle_since", "killed", "retiring",
                 "n_batches")

    def __init__(self, process, conn):
        self.process, self.conn = process, conn
        self.job = None           # (client, batch, callback) while running
        self.idle_since = time.monotonic()
        self.killed = False
        self.retiring = False
        self.n_batches = 0        # batches answered


class _Pool:
    """A reusable pool of worker processes with one manager thread.

    Batches wait in the caller's process until a worker is idle, so that
    cancelling queued work never touches a worker, a crash is pinned on the
    batch the dead worker held, and a call never uses more than its n_jobs
    workers.  Idle workers exit after ``idle_timeout_s`` seconds.
    """

    def __init__(self, start_method, env, initializer=None, initargs=(),
                 idle_timeout_s=_DEFAULT_IDLE_WORKER_TIMEOUT_S,
                 max_batches_per_worker=None, main_by_reference=False,
                 kind="loky"):
        import multiprocessing
        self.ctx = multiprocessing.get_context(start_method)
        self.kind = kind     # the backend, as workers report it (nesting)
        self.env = env
        # Workers forked for one call share __main__ as it is now (_dumps).
        self.main_names = dict(vars(sys.modules["__main__"])) if \
            main_by_reference and "__main__" in sys.modules else None
        self.init_payload = None
        if initializer is not None:
            try:
                self.init_payload = _dumps((initializer, initargs),
                                           main_names=self.main_names)
            except Exception as e:
                raise pickle.PicklingError(
                    "could not pickle initializer=%r with initargs to send "
                    "them to the workers (%s: %s)" % (
                        initializer, type(e).__name__, e)) from e
        self.max_batches_per_worker = max_batches_per_worker
        self.idle_timeout_s = idle_timeout_s
        self.lock = threading.RLock()
        self.workers = []
        # client -> deque of (client, batch, payload, callback), clients in
        # turn order; a client with nothing queued has no entry.
        self.queues: Dict[Any, Any] = {}
        self.clients = set()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)   # a full pipe wakes anyway
        # Held while writing to wake_w and while retiring it: a write after
        # the close could land in whatever pipe reuses the descriptor (a
        # worker's, which then hangs on a torn message).
        self.wake_lock = threading.Lock()
        self.closed = False
        self.ids = itertools.count(1)
        self.thread = threading.Thread(target=self._manage, daemon=True,
                                       name="parallel-pool-manager")
        self.thread.start()
        if not _ALL_POOLS:
            import multiprocessing.util  # noqa: F401  (its handler first)
            atexit.unregister(_shutdown_pools)
            atexit.register(_shutdown_pools)
        _ALL_POOLS.add(self)

    # -- caller side ---------------------------------------------------------
    def _wake(self):
        try:
            with self.wake_lock:
                if self.wake_w is not None:
                    os.write(self.wake_w, b"x")
        except OSError:   # full (a wake-up is pending) or closed
            pass

    def register(self, client):
        """Add a client, starting workers up to the clients' n_jobs but not
        beyond cpu_count(); the manager thread starts the others as batches
        wait for them, so a generator of 3 tasks with n_jobs=1000 starts 3
        workers, not 1000.  With fork, all start here: a fork from the
        manager thread while the caller's thread holds a lock would hand
        the child that lock held."""
        with self.lock:
            self.clients.add(client)
            wanted = sum(c.max_workers for c in self.clients)
            if self.ctx.get_start_method() != "fork":
                wanted = min(wanted, cpu_count())
            missing = wanted - self._serving()
        for _ in range(missing):
            self._spawn()
        self._wake()

    def unregister(self, client):
        with self.lock:
            client.closed = True
            self.clients.discard(client)
            self.cancel(client)

    def _spawn(self):
        if self.closed:
            return
        process, parent_conn = _start_process(
            self.ctx, _worker_main,
            (self.env, self.init_payload, os.getpid(), self.kind))
        with self.lock:
            if not self.closed:
                self.workers.append(_PoolWorker(process, parent_conn))
                return
        process.kill()     # the pool was shut down while this one started
        process.join(1.0)
        parent_conn.close()

    def submit(self, client, batch, payload, callback):
        """Queue a pickled batch; ``callback(kind, data)`` reports its end.

        An idle worker gets the batch at once from the caller's thread (the
        manager thread already waits on every worker's answer); the manager
        is woken only when workers must be started.
        """
        with self.lock:
            if self.closed:
                raise RuntimeError("the worker pool has been shut down")
            self.queues.setdefault(client, collections.deque()).append(
                (client, batch, payload, callback))
            to_spawn = self._assign()
        if to_spawn:
            self._wake()

    def cancel(self, client):
        """Drop the client's queued batches; running ones go on."""
        with self.lock:
            self.queues.pop(client, None)

    def kill(self, client):
        """Cancel the client's queued batches and kill the workers running
        its batches (they are replaced on demand)."""
        with self.lock:
            self.cancel(client)
            for w in self.workers:
                if w.job is not None and w.job[0] is client and not w.killed:
                    w.killed = True
                    try:
                        w.process.kill()
                    except (OSError, AttributeError):
                        pass
        self._wake()

    def shutdown(self, timeout_s=1.0):
        """Stop every worker (ask, then kill after ``timeout_s``)."""
        with self.lock:
            self.closed = True
            workers = list(self.workers)
            self.queues.clear()
        for w in workers:
            try:
                w.conn.send_bytes(b"")
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + timeout_s
        for w in workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.exitcode is None:
                w.process.kill()
                w.process.join(1.0)
        self._wake()

    # -- manager thread ------------------------------------------------------
    def _assign(self):
        """Give queued batches to idle workers (lock held; from the manager
        thread or a caller's).  Returns the number of workers to spawn."""
        idle = [w for w in self.workers
                if w.job is None and not w.killed and not w.retiring]
        for client in list(self.queues) if idle else ():
            queue = self.queues.pop(client)
            while queue and idle and client.running < client.max_workers:
                job = queue.popleft()
                w = idle.pop()
                client.running += 1
                batch_id = next(self.ids)
                w.job = (client, job[1], job[3], batch_id)
                track = b"1" if job[1].track_starts else b"0"
                try:
                    w.conn.send_bytes(_MSG_RUN + batch_id.to_bytes(8, "little")
                                      + track + job[2])
                except (OSError, ValueError):
                    pass   # the worker died; its sentinel reports the loss
            if queue:      # back in line, after the clients not yet served
                self.queues[client] = queue
            if not idle:
                break
        queued = sum(len(queue) for queue in self.queues.values())
        wanted = sum(c.max_workers for c in self.clients)
        return max(0, min(queued, wanted - self._serving()))

    def _serving(self):
        """Workers that can serve the registered clients (lock held): not
        retiring, and not still running a batch of a call that ended (after
        its error): a new call gets workers of its own meanwhile."""
        return sum(1 for w in self.workers if not w.retiring and not (
            w.job is not None and w.job[0].closed))

    def _manage(self):
        """Manager loop.  This runs in the pool's manager thread."""
        try:
            self._manage_loop()
        except BaseException as e:   # never leave callers waiting forever
            self._break(e)
            raise
        finally:
            with self.wake_lock:
                wake_w, self.wake_w = self.wake_w, None
            os.close(wake_w)
            os.close(self.wake_r)

    def _break(self, error):
        """Fail every running and queued batch and stop the workers after an
        internal error of the manager thread."""
        with self.lock:
            self.closed = True
            jobs = [w.job for w in self.workers if w.job is not None]
            jobs += [(j[0], j[1], j[3], None)
                     for queue in self.queues.values() for j in queue]
            self.queues.clear()
            workers, self.workers = list(self.workers), []
        failure = RuntimeError("the worker pool's manager thread failed "
                               "(%s: %s); the next call starts a new pool"
                               % (type(error).__name__, error))
        for job in jobs:
            job[2](_MSG_ERROR, pickle.dumps(_pack_exception(failure)))
        for w in workers:
            w.process.kill()

    def _manage_loop(self):
        from multiprocessing.connection import wait
        while True:
            with self.lock:
                to_spawn = 0 if self.closed else self._assign()
                workers = list(self.workers)
                if self.closed and not workers:
                    break
            for _ in range(to_spawn):
                try:
                    self._spawn()
                except Exception as e:   # report on the queued calls
                    self._fail_queued(e)
            if to_spawn:
                continue
            timeout = self._retire_idle(workers)
            handles = {self.wake_r: None}
            for w in workers:
                handles[w.conn] = w
                handles[w.process.sentinel] = w
            for ready in wait(list(handles), timeout):
                if ready == self.wake_r:
                    os.read(self.wake_r, 4096)
                    continue
                w = handles[ready]
                if ready is w.conn:
                    self._receive(w)
                else:
                    self._reap(w)

    def _fail_queued(self, error):
        with self.lock:
            jobs = [j for queue in self.queues.values() for j in queue]
            self.queues.clear()
        for client, batch, payload, callback in jobs:
            callback(_MSG_ERROR, pickle.dumps(_pack_exception(error)))

    def _retire_idle(self, workers):
        """Ask idle workers past the idle timeout to exit; returns seconds
        until the next one expires (None: no idle worker)."""
        now = time.monotonic()
        nearest = None
        for w in workers:
            if w.job is not None or w.retiring or w.killed:
                continue
            left = w.idle_since + self.idle_timeout_s - now
            if left <= 0 and not self.queues:
                self._retire(w)
            elif nearest is None or left < nearest:
                nearest = max(left, 0.01)
        return nearest

    def _retire(self, w):
        """Ask an idle worker to exit (it is replaced on demand)."""
        w.retiring = True
        try:
            w.conn.send_bytes(b"")
        except (OSError, ValueError):
            pass

    def _receive(self, w):
        try:
            data = w.conn.recv_bytes()
        except (EOFError, OSError):
            self._reap(w)
            return
        kind = data[:1]
        job = w.job
        if job is None or int.from_bytes(data[1:9], "little") != job[3]:
            return   # answer of a batch cancelled with its killed worker
        client, batch, callback, _ = job
        if kind == _MSG_START:
            batch.task_started_s = time.monotonic()
            batch.running = int.from_bytes(data[9:13], "little")
            return
        with self.lock:
            w.job = None
            w.idle_since = time.monotonic()
            client.running -= 1
            w.n_batches += 1
            if self.max_batches_per_worker is not None and \
                    w.n_batches >= self.max_batches_per_worker:
                self._retire(w)       # as Pool's maxtasksperchild
        if not client.closed:
            callback(kind, data[9:])

    def _reap(self, w):
        """A worker's sentinel fired: remove it; report a crash if it held a
        batch it was not killed for."""
        w.process.join(1.0)
        with self.lock:
            if w in self.workers:
                self.workers.remove(w)
            job, w.job = w.job, None
            if job is not None:
                job[0].running -= 1
        try:
            w.conn.close()
        except OSError:
            pass
        if job is None or w.killed or job[0].closed:
            return
        code = w.process.exitcode
        name, hint = _describe_exit(code)
        try:
            error_class = _terminated_worker_error()
        except RuntimeError:   # at exit: "can't register atexit after shutdown"
            return
        error = error_class(
            "A worker process managed by the executor was unexpectedly "
            "terminated (%s, pid %s) while running a task; likely cause: %s."
            "\n\nThe exit codes of the workers are {%s}"
            % (name, w.process.pid, hint, name))
        job[2](_MSG_ERROR, pickle.dumps(_pack_exception(error)))


_POOLS: dict = {}
_POOLS_LOCK = threading.Lock()
# Every pool, shared or private, so that exit stops all workers (they are
# not daemonic, and multiprocessing would wait for them forever).
_ALL_POOLS: "weakref.WeakSet[_Pool]" = weakref.WeakSet()


def _default_start_method(preferred=None):
    """``preferred`` if available, else PARALLEL_START_METHOD /
    JOBLIB_START_METHOD, else forkserver where available, else spawn."""
    import multiprocessing
    available = multiprocessing.get_all_start_methods()
    if preferred in available:
        return preferred
    method = _env("PARALLEL_START_METHOD", "JOBLIB_START_METHOD")
    if method is not None:
        if method not in available:
            raise ValueError("PARALLEL_START_METHOD=%r is not available here; "
                             "use one of %s" % (method, available))
        return method
    return "forkserver" if "forkserver" in available else "spawn"


def _get_pool(start_method, env, initializer=None, initargs=(),
              idle_timeout_s=_DEFAULT_IDLE_WORKER_TIMEOUT_S):
    """The shared pool for these settings; pools with other settings and no
    client have their workers stopped.  The caller's ``sys.path`` is one of
    them: workers started before a change to it could not import what
    tasks need (joblib restarts its workers after the failure)."""
    key = (start_method, tuple(sorted(env.items())), initializer,
           _hashable(initargs), idle_timeout_s, tuple(sys.path))
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None or pool.closed:
            for other_key, other in list(_POOLS.items()):
                if not other.clients:
                    other.shutdown(timeout_s=0.2)
                    del _POOLS[other_key]
            pool = _POOLS[key] = _Pool(start_method, env, initializer,
                                       initargs, idle_timeout_s)
        return pool


def _forget_pools_after_fork():
    """In a child made by fork: the parent's pools (and their manager
    threads) are not this process's; start afresh."""
    global _START_LOCK, _POOLS_LOCK
    _START_LOCK = threading.Lock()
    _POOLS_LOCK = threading.Lock()
    _POOLS.clear()
    _ALL_POOLS.clear()
    # The standard library's fork server is the parent's too: forget it, so
    # that a nested pool in this child starts its own (waitpid on the
    # parent's server fails with ECHILD here).
    module = sys.modules.get("multiprocessing.forkserver")
    server = getattr(module, "_forkserver", None)
    if getattr(server, "_forkserver_pid", None) is not None:
        alive_fd = server._forkserver_alive_fd
        server._forkserver_pid = server._forkserver_address = None
        server._forkserver_alive_fd = None
        if hasattr(server, "_forkserver_authkey"):
            server._forkserver_authkey = None
        server._lock = threading.Lock()
        if alive_fd is not None:
            try:
                os.close(alive_fd)
            except OSError:
                pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools_after_fork)


def _hashable(value):
    try:
        hash(value)
        return value
    except TypeError:
        return id(value)


def _shutdown_pools():
    """Stop every pool's workers.  Registered with atexit when the first
    pool starts, after multiprocessing registered its own exit handler
    (which joins child processes), so that this one runs first."""
    with _POOLS_LOCK:
        pools = list(_ALL_POOLS)
        _POOLS.clear()
    for pool in pools:
        if not pool.closed:
            pool.shutdown(timeout_s=0.5)


# ======================================================================
# BACKENDS
# ======================================================================
class FallbackToBackend(Exception):
    """Raised by ``configure`` to hand the call to another backend."""

    def __init__(self, backend):
        super().__init__(backend)
        self.backend = backend


class ParallelBackendBase:
    """Base class and contract of Parallel backends (joblib's contract).

    :class:`Parallel` calls, in order: ``configure(n_jobs, parallel,
    **kwargs)`` (once per call, or once per ``with Parallel`` block; returns
    the effective number of workers, or raises :class:`FallbackToBackend`),
    then per call ``start_call()``, ``submit(batch, callback)`` for each
    batch, ``retrieve_result_callback(out)`` in the caller's thread for each
    ``callback(out)`` the backend made (any thread), ``stop_call()``, and
    ``terminate()`` when done.  On the first task error it calls
    ``cancel_pending()``; on timeout, Ctrl-C or a closed generator
    ``abort_everything(ensure_ready)``.

    Capability flags (class attributes): ``supports_timeout``,
    ``supports_return_generator``, ``supports_sharedmem``, ``uses_threads``,
    ``supports_inner_max_num_threads``, ``reports_task_starts`` (sets
    ``batch.task_started_s`` so that timeouts count from the start of each
    task) and ``batch_duration_band_s`` ((min, max) seconds aimed at by
    ``batch_size='auto'``; None: batches of one task).

    Parameters
    ----------
    nesting_level : int, optional
        0 for a top-level call, +1 for each level of nesting.
    inner_max_num_threads : int, optional
        Limit of native threads per worker, where supported.
    **backend_kwargs
        Kept in ``self.backend_kwargs`` for subclasses.
    """

    default_n_jobs = 1
    supports_timeout = False
    supports_return_generator = True
    supports_retrieve_callback = True
    supports_sharedmem = False
    uses_threads = False
    supports_inner_max_num_threads = False
    reports_task_starts = False
    batch_duration_band_s: Optional[Tuple[float, float]] = None
    MAX_NUM_THREADS_VARS = _THREAD_LIMIT_VARIABLES
    # Defaults for subclasses whose __init__ skips ours (as joblib's).
    nesting_level: Optional[int] = None
    inner_max_num_threads: Optional[int] = None
    backend_kwargs: Dict[str, Any] = {}

    def __init__(self, nesting_level=None, inner_max_num_threads=None,
                 **backend_kwargs):
        self.nesting_level = nesting_level
        if inner_max_num_threads is not None and \
                not self.supports_inner_max_num_threads:
            raise ValueError("inner_max_num_threads=%r: the %s backend cannot "
                             "limit native threads in its workers; use a "
                             "process backend ('loky', 'processes')"
                             % (inner_max_num_threads, type(self).__name__))
        self.inner_max_num_threads = inner_max_num_threads
        self.backend_kwargs = backend_kwargs

    def effective_n_jobs(self, n_jobs):
        """Number of workers ``n_jobs`` means here (-1: all CPUs)."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning; use "
                             "None, a positive int or a negative int (got 0)")
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        if n_jobs < 0:
            return max(cpu_count() + 1 + n_jobs, 1)
        return n_jobs

    def configure(self, n_jobs=1, parallel=None, **backend_kwargs):
        """Prepare workers; return the effective number of workers."""
        self.parallel = parallel
        return self.effective_n_jobs(n_jobs)

    def start_call(self):
        """Called before the first batch of each call."""

    def stop_call(self):
        """Called after the last batch of each call (also after errors)."""

    def submit(self, batch, callback):
        """Run ``batch()`` (returns a list) and call ``callback(out)`` when
        done or failed.  Returns a future-like object."""
        raise NotImplementedError

    def retrieve_result_callback(self, out):
        """The results list of a finished batch from ``out``, or raise its
        exception.  Runs in the caller's thread."""
        return out.result()

    def max_running_batches(self, n_jobs):
        """How many batches can run at once for ``n_jobs`` (the others wait
        in the backend's queue); counts timeouts where starts are not
        reported."""
        return n_jobs

    def cancel_pending(self):
        """Drop batches not started yet; running ones may finish."""

    def abort_everything(self, ensure_ready=True):
        """Stop all work of this backend now; stay usable if ensure_ready."""
        self.cancel_pending()

    def terminate(self):
        """Release the workers of this call or block."""

    def get_nested_backend(self):
        """(backend, n_jobs) for Parallel calls made inside tasks: threads
        at nesting level 1 with n_jobs=None (sequential unless the inner
        call asks), sequential deeper."""
        level = (self.nesting_level or 0) + 1
        if level > 1:
            return SequentialBackend(nesting_level=level), None
        return ThreadingBackend(nesting_level=level), None

    def retrieval_context(self):
        """Context manager around result collection (dask uses it)."""
        return contextlib.nullcontext()


class _Done:
    """Future-like result of a batch run in the caller's thread."""

    __slots__ = ("value", "error")

    def __init__(self, value=None, error=None):
        self.value, self.error = value, error

    def result(self, timeout=None):
        if self.error is not None:
            raise self.error
        return self.value

    def cancel(self):
        return False


class SequentialBackend(ParallelBackendBase):
    """Runs each batch in the caller's thread, as it is submitted.

    Used for n_jobs=1 by every built-in backend.  Nested calls keep the
    active configuration.
    """

    uses_threads = True
    supports_sharedmem = True

    def effective_n_jobs(self, n_jobs):
        super().effective_n_jobs(n_jobs)
        return 1

    def submit(self, batch, callback):
        try:
            done = _Done(batch())
        except Exception as e:
            done = _Done(error=e)
        callback(done)
        return done

    def get_nested_backend(self):
        cfg = _ACTIVE_CONFIG.get() or {}
        backend = cfg.get("backend")
        if isinstance(backend, ParallelBackendBase):
            return backend, cfg.get("n_jobs")
        return SequentialBackend(nesting_level=self.nesting_level), None


class _DaemonThreadPool:
    """Up to ``n`` daemon threads running submitted callables.

    As ``concurrent.futures.ThreadPoolExecutor`` (futures, lazily started
    threads), but its threads are daemons, as joblib's: a task abandoned
    after an error, a timeout or Ctrl-C does not keep the interpreter from
    exiting.
    """

    def __init__(self, n):
        import queue
        self.n = n
        self.queue: Any = queue.SimpleQueue()
        self.threads: list = []

    def submit(self, fn):
        from concurrent.futures import Future
        future: Any = Future()
        self.queue.put((future, fn))
        if len(self.threads) < self.n:
            thread = threading.Thread(target=self._work, daemon=True,
                                      name="parallel-thread-%d"
                                      % len(self.threads))
            thread.start()
            self.threads.append(thread)
        return future

    def _work(self):
        while True:
            item = self.queue.get()
            if item is None:
                return
            future, fn = item
            del item
            if future.set_running_or_notify_cancel():
                try:
                    result = fn()
                except BaseException as e:
                    future.set_exception(e)
                else:
                    future.set_result(result)
                    del result
            del future, fn     # an idle thread keeps no batch alive

    def shutdown(self):
        """Cancel what has not started; threads end after their task."""
        import queue
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()
        for _ in self.threads:
            self.queue.put(None)


class ThreadingBackend(ParallelBackendBase):
    """Runs batches in a pool of threads of the caller's process.

    Cheap to start, shares memory with the caller (``require='sharedmem'``)
    and fast for code that releases the GIL (numpy, I/O).  Tasks get the
    nested configuration, not the caller's ``parallel_config`` (as joblib).
    A running task cannot be stopped: after an error, a timeout or Ctrl-C
    nothing new starts and running tasks finish in the background, in
    daemon threads (as joblib's: they do not delay the interpreter's exit).
    """

    supports_timeout = True
    supports_sharedmem = True
    uses_threads = True
    reports_task_starts = True
    batch_duration_band_s = (_THREAD_MIN_IDEAL_BATCH_DURATION_S,
                             _THREAD_MAX_IDEAL_BATCH_DURATION_S)

    def configure(self, n_jobs=1, parallel=None, **backend_kwargs):
        n_jobs = self.effective_n_jobs(n_jobs)
        if n_jobs == 1:
            raise FallbackToBackend(
                SequentialBackend(nesting_level=self.nesting_level))
        self.parallel = parallel
        self._n_jobs = n_jobs
        self._executor = None
        return n_jobs

    def submit(self, batch, callback):
        if self._executor is None:
            self._executor = _DaemonThreadPool(self._n_jobs)
        future = self._executor.submit(batch)
        future.add_done_callback(callback)
        return future

    def cancel_pending(self):
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown()

    def terminate(self):
        self.cancel_pending()


def _check_pool_options(initializer, initargs, idle_worker_timeout,
                        maxtasksperchild):
    """Validate the worker-pool keywords of the process backends."""
    if initializer is not None and not callable(initializer):
        raise InvalidParameterError("initializer must be a callable or None "
                                    "(got %r)" % (initializer,))
    if not isinstance(initargs, (tuple, list)):
        raise InvalidParameterError("initargs must be a tuple of arguments "
                                    "for the initializer (got %r)"
                                    % (initargs,))
    if idle_worker_timeout is not None:
        seconds = _as_seconds(idle_worker_timeout)
        if seconds is None or not seconds > 0:
            raise InvalidParameterError(
                "idle_worker_timeout must be a positive number of seconds or "
                "None (got %r)" % (idle_worker_timeout,))
    if maxtasksperchild is not None:
        _check_positive_int("maxtasksperchild", maxtasksperchild)


class LokyBackend(ParallelBackendBase):
    """Runs batches in a reusable pool of worker processes (the default).

    Registered as ``'loky'`` (joblib's name) and ``'processes'``.  Workers
    start with ``forkserver`` where available, else ``spawn``
    (``PARALLEL_START_METHOD`` overrides), never re-import the caller's
    ``__main__``, get thread-limit variables (``inner_max_num_threads`` or
    ``max(cpu_count() // n_jobs, 1)``; values set in the caller's
    environment win), and are reused by later calls with the same settings.
    Tasks are pickled once per batch with cloudpickle; arrays above
    ``max_nbytes`` travel as memory maps.  A worker that dies raises
    :class:`TerminatedWorkerError`; a timeout kills the overdue worker.
    Named inside a task of a 'multiprocessing' worker or of a thread
    backend, a call runs with n_jobs=1 and a UserWarning (as joblib; the
    'multiprocessing' backend does so inside any worker).

    Extra ``Parallel``/``parallel_config`` keywords: ``initializer`` and
    ``initargs`` (run once per worker process, which is reused),
    ``idle_worker_timeout`` (seconds, default 300).
    """

    supports_timeout = True
    supports_inner_max_num_threads = True
    reports_task_starts = True
    batch_duration_band_s = (_MIN_IDEAL_BATCH_DURATION_S,
                             _MAX_IDEAL_BATCH_DURATION_S)
    start_method: Optional[str] = None
    private_pool = False

    def effective_n_jobs(self, n_jobs):
        n_jobs = super().effective_n_jobs(n_jobs)
        reason = self._nesting_refusal() if n_jobs != 1 else None
        if reason is not None:
            warnings.warn(reason + ", setting n_jobs=1", UserWarning,
                          stacklevel=3)
            return 1
        return n_jobs

    def _nesting_refusal(self):
        """Why a call must run sequentially here, in joblib's words, or
        None (as joblib): no process pool inside a daemonic process or a
        'multiprocessing' worker, no 'multiprocessing' pool inside any
        worker, and none from a thread backend's task (n_jobs x n_jobs
        processes)."""
        kind = _WORKER_KIND[0]
        # Imported, not looked up: another thread may be importing it (a
        # module half imported has no current_process yet).
        try:
            import multiprocessing as mp
        except ImportError:       # no processes here: threads will do
            return None
        if mp.current_process().daemon:
            hint = ""
            worker = sys.modules.get("distributed.worker")
            if worker is not None and hasattr(worker.thread_state,
                                              "execution_state"):
                hint = ("; in a dask worker, possible work-arounds: "
                        "dask.config.set({'distributed.worker.daemon': "
                        "False}) or the environment variable "
                        "DASK_DISTRIBUTED__WORKER__DAEMON=False before "
                        "creating the dask cluster")
            return "%s-backed parallel loops cannot be called in a daemonic " \
                "process (such as a multiprocessing.Pool worker), which " \
                "may not have children%s" % (
                    "Multiprocessing" if self.private_pool else "Loky", hint)
        if kind == "multiprocessing":
            return "Multiprocessing-backed parallel loops cannot be nested" \
                if self.private_pool else "Loky-backed parallel loops " \
                "cannot be called in a multiprocessing worker"
        if kind is not None and self.private_pool:
            return "Multiprocessing-backed parallel loops cannot be " \
                "nested, below loky"
        if self.nesting_level and \
                threading.current_thread() is not threading.main_thread():
            return "%s-backed parallel loops cannot be nested below " \
                "threads" % ("Multiprocessing" if self.private_pool
                             else "Loky")
        return None

    def configure(self, n_jobs=1, parallel=None, **options):
        # Keywords given to the backend itself, as parallel_config('loky',
        # initializer=...) does, count too; the call's win (as in joblib).
        return self._configure(n_jobs, parallel,
                               **{**self.backend_kwargs, **options})

    def _configure(self, n_jobs, parallel, temp_folder=None,
                   max_nbytes=_DEFAULT_MAX_NBYTES, mmap_mode=_DEFAULT_MMAP_MODE,
                   initializer=None, initargs=(), idle_worker_timeout=None,
                   maxtasksperchild=None, **unknown):
        if maxtasksperchild is not None and not self.private_pool:
            unknown["maxtasksperchild"] = maxtasksperchild
        if unknown:
            raise ValueError("unknown keyword argument(s) for the %s backend: "
                             "%s" % (type(self).__name__,
                                     ", ".join(sorted(unknown))))
        _check_pool_options(initializer, initargs, idle_worker_timeout,
                            maxtasksperchild)
        n_jobs = self.effective_n_jobs(n_jobs)
        if n_jobs == 1:
            raise FallbackToBackend(
                SequentialBackend(nesting_level=self.nesting_level))
        if getattr(_LOADING_TASK, "active", False):
            raise RuntimeError(
                "a process-backed Parallel call started while this worker "
                "was loading a task: a module that the task needs starts it "
                "when imported (each worker would import it and start more "
                "workers); put that call under `if __name__ == "
                "'__main__':` or inside a function")
        if not _multiprocessing_available():
            warnings.warn("process backends are not available here; falling "
                          "back to threads", UserWarning, stacklevel=3)
            raise FallbackToBackend(ThreadingBackend(
                nesting_level=self.nesting_level))
        self.parallel = parallel
        self._temp_root = _temp_root(temp_folder)
        self._max_nbytes = _parse_nbytes(max_nbytes)
        self._mmap_mode = mmap_mode
        if idle_worker_timeout is not None:
            idle = float(idle_worker_timeout)
        else:
            text = _env("PARALLEL_IDLE_WORKER_TIMEOUT")
            idle = _DEFAULT_IDLE_WORKER_TIMEOUT_S if text is None else \
                _float_or_none(text)
            if idle is None or not 0 < idle < math.inf:
                raise ValueError("PARALLEL_IDLE_WORKER_TIMEOUT=%r: it must be "
                                 "a positive number of seconds" % (text,))
        env = self._worker_env(n_jobs)
        method = _default_start_method(self.start_method)
        if self.private_pool:
            self._pool = _Pool(method, env, initializer, initargs, idle,
                               maxtasksperchild, main_by_reference=(
                                   method == "fork"), kind="multiprocessing")
        else:
            self._pool = _get_pool(method, env, initializer, initargs, idle)
        # Never more workers than the call has tasks, when it says.
        n_tasks = getattr(parallel, "_n_tasks_hint", None)
        self._client = _Client(n_jobs if not n_tasks else min(n_jobs,
                                                               n_tasks))
        self._pool.register(self._client)
        self._folder = None
        self._reducer = None
        return n_jobs

    def _worker_env(self, n_jobs):
        limit = self.inner_max_num_threads
        default = str(limit if limit is not None else
                      max(cpu_count() // n_jobs, 1))
        return {name: os.environ[name] if limit is None and
                name in os.environ else default
                for name in _THREAD_LIMIT_VARIABLES}

    def start_call(self):
        self._folder = _CallFolder(self._temp_root)
        self._reducer = _ArrayReducer(self._max_nbytes, self._mmap_mode,
                                      self._folder)

    def stop_call(self):
        try:
            if self._reducer is not None:
                self._reducer.write_back()
        finally:
            if self._folder is not None:
                self._folder.cleanup()
            self._reducer = None

    def submit(self, batch, callback):
        try:     # where workers put large results (else: the pipe)
            batch.result_folder = self._folder.get()
        except OSError:
            batch.result_folder = None
        # The payload holds the tasks: they are dropped so that they die
        # young (a full garbage collection costs more than the dispatch).
        payload = _pickle_batch(batch, self._reducer, self._pool.main_names)
        self._pool.submit(self._client, batch, payload,
                          lambda kind, data: callback((kind, data)))
        return None

    def retrieve_result_callback(self, out):
        return _outcome(*out)

    def cancel_pending(self):
        self._pool.cancel(self._client)

    def abort_everything(self, ensure_ready=True):
        self._pool.kill(self._client)

    def terminate(self):
        self.stop_call()
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.unregister(self._client)
            if self.private_pool:
                pool.shutdown()
            self._pool = None


# The class is named after joblib's, so verbose output reads the same.
ProcessBackend = LokyBackend


class MultiprocessingBackend(ProcessBackend):
    """Process backend with a new pool per call (or per ``with`` block)
    started with ``fork`` where available, so tasks see the caller's
    globals as they are at call time (joblib's 'multiprocessing').

    Unlike ``multiprocessing.Pool`` it detects dead workers
    (:class:`TerminatedWorkerError` instead of a hang), pickles tasks with
    cloudpickle (lambdas and local classes work), limits native threads and
    supports every ``return_as`` mode.  Besides the keywords of
    :class:`LokyBackend` it takes ``maxtasksperchild`` (as
    ``multiprocessing.Pool``: a worker is replaced after that many batches).
    """

    private_pool = True
    start_method = "fork"   # "spawn" where fork does not exist


def _forgetful(callback):
    """``callback`` for a future that may keep its done-callbacks after
    running them (Ray's and dask's do): the wrapper drops ``callback``,
    and with it the batch and its arrays, once it has run."""
    holder = [callback]

    def run_once(future):
        if holder:
            holder.pop()(future)
    return run_once


_INLINE_TYPES = frozenset((int, float, complex, bool, str, bytes,
                           type(None)))


class _ClusterBackend(ParallelBackendBase):
    """What the dask and Ray backends share: timeouts, joblib's batch
    durations, n_jobs=-1 meaning every slot of the cluster (-2 all but
    one), nested calls run sequentially inside their tasks (dask's run on
    the cluster), and large arguments put on the cluster once per call.

    An argument of a task (positional, or a keyword's value) that can be
    weakly referenced (a numpy array, a DataFrame, most objects), is at
    least ``_CLUSTER_SHARE_MIN_NBYTES`` large and that a second batch of
    the call names is put on the cluster once (:meth:`_share`): pickled as
    task arguments are (memmaps and shared arrays by reference; each
    batch unpickles its own copy), or, for a plain array above the call's
    ``max_nbytes`` (with ``mmap_mode='r'``), the array itself, which tasks
    get read-only (one copy per worker, as the process backends memmap
    it).  The batches then carry a :class:`_SharedSlot`.  So an array
    passed to every task crosses the network about once per worker, not
    once per task, as with joblib's dask backend; an argument seen once
    travels in its batch, and is not kept on the cluster.  Only top-level
    arguments are shared; the object as it is when first shared is what
    later tasks get.
    """

    supports_timeout = True
    batch_duration_band_s = (_MIN_IDEAL_BATCH_DURATION_S,
                             _MAX_IDEAL_BATCH_DURATION_S)
    default_n_jobs = -1
    _pinned: Dict[int, Any] = {}     # id -> (object, handle): every call
    _share_arrays_over: Optional[int] = None

    def _slots(self):
        """Tasks the cluster runs at once (threads, CPUs)."""
        raise NotImplementedError

    def _share(self, blob):
        """Put the bytes ``blob`` on the cluster; return what a task
        argument is given to receive them (a dask future, a Ray object
        reference)."""
        raise NotImplementedError

    def _sizeof(self, x):
        """Approximate size of ``x`` in bytes."""
        n = getattr(x, "nbytes", None)
        return n if isinstance(n, int) else sys.getsizeof(x)

    def effective_n_jobs(self, n_jobs):
        super().effective_n_jobs(n_jobs)      # refuses 0
        if n_jobs is None or n_jobs < 0:
            return max(self._slots() + 1 + (n_jobs or -1), 1)
        return n_jobs

    def get_nested_backend(self):
        return SequentialBackend(nesting_level=(self.nesting_level or 0) + 1), \
            None

    def _configure_sharing(self, parallel):
        """Arrays above the call's ``max_nbytes`` go to workers as one
        read-only copy each where ``mmap_mode`` is 'r' (the default), as
        the process backends memmap them; other modes copy per batch."""
        max_nbytes = _parse_nbytes(getattr(parallel, "max_nbytes",
                                           _DEFAULT_MAX_NBYTES))
        self._share_arrays_over = max_nbytes if getattr(
            parallel, "mmap_mode", _DEFAULT_MMAP_MODE) == "r" else None

    def start_call(self):
        self._shared: Dict[int, Any] = {}  # id -> (weakref, handle or None)
        self._shared_keep: list = []       # shared arrays the blobs name

    def stop_call(self):
        shared = getattr(self, "_shared", None)
        if shared is not None:
            shared.clear()     # releases the call's data on the cluster
        self._shared_keep = []

    @staticmethod
    def _pickle_for_cluster(x, keep):
        """``x`` pickled as task arguments are, the shared arrays that the
        bytes name appended to ``keep`` (to keep them alive)."""
        reducer = _ArrayReducer(None, None, None)
        blob = _dumps(x, reducer)
        keep.extend(reducer.take_kept())
        return blob

    @staticmethod
    def _plain_array(x):
        """True for an ndarray (no subclass) that holds no objects and is
        not backed by a file or segment (those travel by reference)."""
        np = sys.modules.get("numpy")
        return np is not None and type(x) is np.ndarray and \
            not x.dtype.hasobject and _memmap_reference(x) is None

    def _entry(self, x):
        """The call's record of argument ``x``: [weak reference, handle on
        the cluster or None, batches that used it, kind ('array': read-only
        above max_nbytes, 'blob': pickled, None: always inside the
        batch)], or None when ``x`` cannot be weakly referenced."""
        key = id(x)
        entry = self._shared.get(key)
        if entry is not None and entry[0]() is x:
            return entry
        shared = self._shared
        try:
            ref = weakref.ref(x, lambda _, k=key: shared.pop(k, None))
        except TypeError:     # lists, tuples, dicts: inside the batch
            return None
        kind = None
        if self._share_arrays_over is not None and self._plain_array(x) \
                and x.nbytes > self._share_arrays_over:
            kind = "array"
        elif self._sizeof(x) >= _CLUSTER_SHARE_MIN_NBYTES:
            kind = "blob"
        entry = shared[key] = [ref, None, 0, kind]
        return entry

    def _put(self, x, entry):
        """Put ``x`` on the cluster for the rest of the call (an array
        itself, else pickled); the handle, or None to keep it inside the
        batch (its pickling fails again there, named)."""
        try:
            if entry[3] == "array":
                return self._share(x)
            blob = self._pickle_for_cluster(x, self._shared_keep)
            if len(blob) >= _CLUSTER_SHARE_MIN_NBYTES:
                return self._share(blob)
        except Exception:
            pass
        entry[3] = None
        return None

    def _pickle_batch(self, batch):
        """(payload, handles): the batch pickled for a worker, and the
        handles of the arguments that travel apart, in slot order.

        A large argument travels inside the first batch that names it (an
        argument per task costs no extra round trip, and is not kept on
        the cluster); from the second batch on it is put on the cluster
        once and the batches carry a :class:`_SharedSlot`.  An array above
        ``max_nbytes`` reaches tasks read-only either way."""
        handles: list = []
        swapped: Dict[int, Any] = {}     # id -> what replaces it here
        pinned = self._pinned

        def swap(x):
            key = id(x)
            done = swapped.get(key)
            if done is not None:
                return done
            if pinned:
                entry = pinned.get(key)
                if entry is not None and entry[0] is x:
                    done = swapped[key] = _SharedSlot(len(handles))
                    handles.append(entry[1])
                    return done
            if x.__class__ in _INLINE_TYPES:
                return x
            entry = self._entry(x)
            if entry is None or entry[3] is None:
                return x
            entry[2] += 1
            if entry[1] is None and entry[2] > 1:
                entry[1] = self._put(x, entry)
            if entry[1] is not None:
                done = _SharedSlot(len(handles))
                handles.append(entry[1])
            elif entry[3] == "array":
                done = _ReadOnlyArgument(x)
            else:
                done = x
            swapped[key] = done
            return done
        if batch.func is not None:
            tasks = [tuple(map(swap, args)) for args in batch.tasks]
        else:
            tasks = [(f, tuple(map(swap, args)),
                      {k: swap(v) for k, v in kwargs.items()})
                     if isinstance(args, tuple) and isinstance(kwargs, dict)
                     else (f, args, kwargs)
                     for f, args, kwargs in batch.tasks]
        if swapped:
            batch.tasks = tasks
        return _pickle_batch(batch, _ArrayReducer(None, None, None)), handles


def _register_dask():
    try:
        import distributed  # type: ignore  # noqa: F401
    except ImportError:
        raise ValueError("backend 'dask' needs dask.distributed; install it "
                         "with `pip install distributed`") from None
    BACKENDS["dask"] = DaskDistributedBackend


def _dask_probe():
    """A no-op task: it runs once a dask worker has joined."""


class DaskDistributedBackend(_ClusterBackend):
    """Runs batches on a dask.distributed cluster, as joblib's backend of
    the same name (also importable as ``DaskBackend``).

    n_jobs=-1 (the default here) means every thread of the cluster, -2 all
    but one.  Tasks travel pickled as for the process backends: memmaps
    and shared arrays by reference (workers on this host write into the
    caller's), other arrays by value.  An argument of 1000 bytes or more
    is scattered once per call, not sent with every task: arrays above
    ``max_nbytes`` (with ``mmap_mode='r'``, the defaults) as one read-only
    copy per worker, as the process backends memmap them; ``scatter=``
    sends objects to every worker once for all calls.  Exceptions keep their
    type, cause chain and traceback text.  A task that kills its dask
    worker fails the call promptly with :class:`TerminatedWorkerError`
    (chained from dask's ``KilledWorker``) instead of hanging.  A call made
    inside a dask task runs on the cluster too (n_jobs=-1 by default), and
    leaves the worker's thread pool while it waits, as joblib's, so nested
    calls do not deadlock.  Registered on first use of the name ``'dask'``.

    Parameters
    ----------
    nesting_level, inner_max_num_threads
        As :class:`ParallelBackendBase` (dask manages worker threads itself).
    client : distributed.Client, optional
        The client to submit to; default: a new client of
        ``scheduler_host`` if given, else ``distributed.get_client()``.
    scheduler_host : str, optional
        Address of the scheduler to connect to when ``client`` is None.
    scatter : list or tuple, optional
        Objects sent to every worker once (``Client.scatter(...,
        broadcast=True)``); tasks naming them (by identity) receive them
        without sending them again (numpy arrays read-only, shared by the
        worker's tasks; other objects as a copy per batch).
    loop : optional
        The event loop of a client made for ``scheduler_host``.
    wait_for_workers_timeout : float, default 10
        Seconds a call waits for a first worker when the cluster has none;
        0 fails at once.
    **submit_kwargs
        Passed to every ``Client.submit`` (``workers=``, ``resources=``,
        ``retries=``, ``priority=``, ``allow_other_workers=``...).

    Raises
    ------
    ValueError
        When dask.distributed is not installed (at registration), or no
        client exists and no ``scheduler_host`` is given.
    TypeError
        ``scatter`` is not a list or tuple (an InvalidParameterError).
    TimeoutError
        At a call, when no worker joined within
        ``wait_for_workers_timeout`` seconds; RuntimeError when it is 0.
    """

    def __init__(self, nesting_level=None, inner_max_num_threads=None,
                 client=None, scheduler_host=None, scatter=None, loop=None,
                 wait_for_workers_timeout=_DASK_WAIT_FOR_WORKERS_S,
                 **submit_kwargs):
        super().__init__(nesting_level, inner_max_num_threads)
        if scatter is not None and not isinstance(scatter, (list, tuple)):
            raise InvalidParameterError(
                "scatter must be a list/tuple of objects to send to every "
                "worker once, got `%s`" % type(scatter).__name__)
        timeout = _as_seconds(wait_for_workers_timeout)
        if timeout is None or timeout < 0:
            raise InvalidParameterError(
                "wait_for_workers_timeout must be a number of seconds >= 0 "
                "(got %r)" % (wait_for_workers_timeout,))
        for name in ("key", "pure"):
            if name in submit_kwargs:
                raise InvalidParameterError(
                    "%s=%r: the dask backend sets %s itself"
                    % (name, submit_kwargs[name], name))
        if client is None:
            from distributed import Client, get_client  # type: ignore
            if scheduler_host:
                client = Client(scheduler_host, loop=loop,
                                set_as_default=False)
            else:
                try:
                    client = get_client()
                except ValueError as e:
                    raise ValueError(
                        "the 'dask' backend needs a dask client: first "
                        "create a dask client:\n\n"
                        "    from dask.distributed import Client\n"
                        "    client = Client()                  # a local "
                        "cluster\n"
                        "or\n"
                        "    client = Client('scheduler-address:8786')") \
                        from e
        self.client = client
        self.wait_for_workers_timeout = timeout
        self.submit_kwargs = submit_kwargs
        self._threads = 1      # of the cluster, at configure
        self._pinned = {}
        self._pinned_keep: list = []
        for x in scatter or ():
            data = x if self._plain_array(x) else \
                self._pickle_for_cluster(x, self._pinned_keep)
            self._pinned[id(x)] = (
                x, client.scatter(data, hash=False, broadcast=True))

    def __reduce__(self):
        # A nested call's backend, rebuilt in a dask task: the worker's
        # client (distributed.get_client) and the same submit keywords.
        # Its nesting level starts again at 0, as joblib's: each dask task
        # runs on a worker thread of its own.
        return _nested_dask_backend, (self.wait_for_workers_timeout,
                                      self.submit_kwargs)

    def __copy__(self):      # Parallel's per-call copy: not __reduce__'s
        backend = object.__new__(type(self))
        backend.__dict__.update(self.__dict__)
        return backend

    def _slots(self):
        return sum(self.client.nthreads().values()) or 1

    def _sizeof(self, x):
        from dask.sizeof import sizeof  # type: ignore
        return sizeof(x)

    def _share(self, blob):
        # hash=False: a scatter from inside a task with hash=True often
        # fails with CancelledError (dask/distributed#3703, as joblib).
        return self.client.scatter(blob, hash=False)

    def get_nested_backend(self):
        return DaskDistributedBackend(
            nesting_level=(self.nesting_level or 0) + 1, client=self.client,
            wait_for_workers_timeout=self.wait_for_workers_timeout,
            **self.submit_kwargs), -1

    def configure(self, n_jobs=1, parallel=None, **backend_kwargs):
        self.parallel = parallel
        self._configure_sharing(parallel)
        self._futures = set()
        if not sum(self.client.nthreads().values()):
            self._wait_for_workers()
        self._threads = self._slots()
        return self.effective_n_jobs(n_jobs)

    def _wait_for_workers(self):
        timeout = self.wait_for_workers_timeout
        if not timeout:
            raise RuntimeError(
                "DaskDistributedBackend has no active worker: the dask "
                "cluster of %s has none (pass wait_for_workers_timeout=S to "
                "wait S seconds for one)" % (self.client.scheduler.address,))
        # A task makes an adaptive cluster start workers; it runs once one
        # has joined.
        probe = self.client.submit(_dask_probe, pure=False)
        try:
            probe.result(timeout=timeout)
        except Exception as e:
            if "Timeout" not in type(e).__name__:
                raise
            raise TimeoutError(
                "DaskDistributedBackend has no worker after %s seconds. "
                "Make sure that workers are started and can connect to the "
                "scheduler (%s), or wait longer with parallel_config("
                "backend='dask', wait_for_workers_timeout=%s)" % (
                    timeout, self.client.scheduler.address,
                    max(10, 2 * timeout))) from None
        finally:
            probe.release()

    def max_running_batches(self, n_jobs):
        return max(1, min(n_jobs, self._threads))

    def submit(self, batch, callback):
        # Named as joblib's, for the dask dashboard: batch_of_f_3_calls
        # (mixed_batch_of_... when its tasks call several functions).
        func = batch.function()
        mixed = batch.func is None and any(
            task[0] is not func for task in batch.tasks)
        key = "%sbatch_of_%s_%d_calls-%s" % (
            "mixed_" if mixed else "", getattr(func, "__name__",
                                               type(func).__name__),
            len(batch), os.urandom(8).hex())
        payload, handles = self._pickle_batch(batch)
        future = self.client.submit(
            _run_shared_payload if handles else _run_payload, payload,
            *handles, pure=False, key=key, **self.submit_kwargs)
        self._futures.add(future)
        future.add_done_callback(_forgetful(callback))
        return future

    def retrieve_result_callback(self, out):
        self._futures.discard(out)
        try:
            return _outcome(*out.result())
        except Exception as e:
            if type(e).__name__ != "KilledWorker":
                raise
            raise _terminated_worker_error()(
                "dask gave up on a task whose workers died while running it "
                "(%s); likely cause: a crash or the memory limit of the dask "
                "worker" % e) from e

    def cancel_pending(self):
        futures, self._futures = list(self._futures), set()
        if futures:
            self.client.cancel(futures)

    def retrieval_context(self):
        @contextlib.contextmanager
        def seceded():
            from distributed import rejoin, secede  # type: ignore
            from distributed.worker import thread_state  # type: ignore
            inside = hasattr(thread_state, "execution_state")
            if inside:     # a dask task: free its worker thread meanwhile
                secede()
            try:
                yield
            finally:
                if inside:
                    rejoin()
        return seceded()


DaskBackend = DaskDistributedBackend


def _nested_dask_backend(wait_for_workers_timeout, submit_kwargs):
    """Unpickle a nested call's dask backend, in a dask task."""
    return DaskDistributedBackend(
        nesting_level=0, wait_for_workers_timeout=wait_for_workers_timeout,
        **submit_kwargs)


def _register_ray():
    try:
        import ray  # type: ignore  # noqa: F401
    except ImportError:
        raise ValueError("backend 'ray' needs Ray; install it with "
                         "`pip install ray`") from None
    BACKENDS["ray"] = RayBackend


_RAY_TASK: list = []     # ray.remote(_run_payload), of _run_shared_payload


def _in_ray_task(ray):
    """True when this code runs in a Ray worker (a task or an actor)."""
    try:
        from ray._private.worker import WORKER_MODE  # type: ignore
        return ray.get_runtime_context().worker.mode == WORKER_MODE
    except Exception:   # another Ray layout: assume the driver
        return False


class RayBackend(_ClusterBackend):
    """Runs batches as Ray tasks on the Ray cluster of this process.

    When Ray is not initialized, ``ray.init()`` is called, which connects
    to ``RAY_ADDRESS`` or starts a local cluster (as Ray's own joblib
    backend does).  n_jobs=-1 (the default here) means every CPU of the
    cluster, -2 all but one.  Tasks travel pickled as for the process
    backends: memmaps and shared arrays by reference (workers on this host
    write into the caller's), other arrays by value; an argument of 1000
    bytes or more goes to Ray's object store once per call (arrays above
    ``max_nbytes`` reach tasks read-only, as the process backends memmap
    them; see :class:`DaskDistributedBackend`); exceptions keep their
    type, message, ``__cause__`` chain and
    traceback text.  A task whose Ray worker dies fails the call at once
    with :class:`TerminatedWorkerError` (chained from Ray's error; tasks
    are not retried unless ``ray_remote_args`` sets ``max_retries``).  On
    a timeout or Ctrl-C the running tasks are cancelled with
    ``ray.cancel(force=True)``, which ends their worker processes.  Named
    inside a Ray task, a call runs with n_jobs=1 and a UserWarning (its
    outer task would hold the CPU its inner tasks wait for).  Registered
    on first use of the name ``'ray'``.

    Parameters
    ----------
    nesting_level, inner_max_num_threads
        As :class:`ParallelBackendBase` (Ray manages its workers itself).
    ray_remote_args : dict, optional
        Options of every Ray task (``ray.remote`` keywords such as
        ``num_cpus``, ``resources`` or ``max_retries``); default: one CPU
        per task.  A request larger than the whole cluster warns (the
        tasks would wait for resources that may never come).

    Raises
    ------
    ValueError
        When Ray is not installed (at registration); ``num_returns`` other
        than 1 in ``ray_remote_args``.
    """

    def __init__(self, nesting_level=None, inner_max_num_threads=None,
                 ray_remote_args=None, **backend_kwargs):
        super().__init__(nesting_level, inner_max_num_threads,
                         **backend_kwargs)
        if ray_remote_args is not None and \
                not isinstance(ray_remote_args, dict):
            raise InvalidParameterError("ray_remote_args must be a dict of "
                                        "ray.remote options (got %r)"
                                        % (ray_remote_args,))
        self.ray_remote_args = dict(ray_remote_args or {})
        if self.ray_remote_args.get("num_returns", 1) != 1:
            raise ValueError("ray_remote_args: num_returns=%r is not "
                             "supported (a batch returns one object)"
                             % (self.ray_remote_args["num_returns"],))
        self._refs = {}    # future -> ObjectRef
        self._remote = self._remote_shared = None
        self._cpus = 1.0       # of the cluster, at configure

    @staticmethod
    def _ray():
        import ray  # type: ignore
        if not ray.is_initialized():
            ray.init()
        return ray

    def _slots(self):
        return int(self._ray().cluster_resources().get("CPU", 0)) or 1

    def effective_n_jobs(self, n_jobs):
        n_jobs = super().effective_n_jobs(n_jobs)
        if n_jobs != 1 and _in_ray_task(self._ray()):
            warnings.warn("Ray-backed parallel loops cannot be nested in a "
                          "Ray task (it would hold the CPU that its inner "
                          "tasks wait for), setting n_jobs=1", UserWarning,
                          stacklevel=3)
            return 1
        return n_jobs

    def configure(self, n_jobs=1, parallel=None, **backend_kwargs):
        ray = self._ray()
        self.parallel = parallel
        self._configure_sharing(parallel)
        self._refs = {}
        if not _RAY_TASK:      # made once: Ray exports them once per cluster
            _RAY_TASK.extend((ray.remote(_run_payload),
                              ray.remote(_run_shared_payload)))
        options = {"max_retries": 0, **self.ray_remote_args}
        self._remote = _RAY_TASK[0].options(**options)
        self._remote_shared = _RAY_TASK[1].options(**options)
        cluster = ray.cluster_resources()
        self._cpus = cluster.get("CPU", 1)
        self._warn_unsatisfiable(cluster)
        n_jobs = self.effective_n_jobs(n_jobs)
        if n_jobs == 1 and _in_ray_task(ray):   # in this task, not on Ray
            raise FallbackToBackend(SequentialBackend(
                nesting_level=self.nesting_level))
        return n_jobs

    def max_running_batches(self, n_jobs):
        per_task = float(self.ray_remote_args.get("num_cpus") or 1)
        return max(1, min(n_jobs, int(self._cpus // per_task)))

    def _warn_unsatisfiable(self, cluster):
        args = self.ray_remote_args
        wanted = dict(args.get("resources") or {})
        for key, name in (("num_cpus", "CPU"), ("num_gpus", "GPU"),
                          ("memory", "memory")):
            if args.get(key):
                wanted[name] = args[key]
        missing = {name: amount for name, amount in wanted.items()
                   if amount > cluster.get(name, 0)}
        if missing:
            warnings.warn("ray_remote_args ask for %s per task but the whole "
                          "Ray cluster has %s: the tasks wait until it has "
                          "them" % (missing, {name: cluster.get(name, 0)
                                              for name in missing}),
                          UserWarning, stacklevel=4)

    def _share(self, blob):
        return self._ray().put(blob)

    def submit(self, batch, callback):
        payload, refs = self._pickle_batch(batch)
        ref = (self._remote_shared if refs else self._remote).remote(
            payload, *refs)
        future = ref.future()
        self._refs[future] = ref
        future.add_done_callback(_forgetful(callback))
        return future

    def retrieve_result_callback(self, out):
        self._refs.pop(out, None)
        try:
            kind, data = out.result()
        except Exception as e:
            import ray.exceptions  # type: ignore
            died = tuple(getattr(ray.exceptions, name) for name in (
                "WorkerCrashedError", "OutOfMemoryError", "NodeDiedError")
                if hasattr(ray.exceptions, name))
            if isinstance(e, ray.exceptions.RaySystemError) or isinstance(
                    getattr(e, "cause", None), ray.exceptions.RaySystemError):
                cause = getattr(e, "cause", None) or e
                raise WorkerError(
                    "a Ray worker could not load the task (%s); this module "
                    "must be importable there (for modules of a local "
                    "folder, start Ray with runtime_env={'working_dir': ...} "
                    "or {'env_vars': {'PYTHONPATH': ...}})" % (
                        str(cause).strip().splitlines()[-1],)) from e
            if not isinstance(e, died):
                raise
            raise _terminated_worker_error()(
                "the Ray worker running a task died (%s: %s); likely "
                "cause: a crash, os._exit(), or Ray's memory monitor or the "
                "OS killing it for using too much memory"
                % (type(e).__name__, str(e).strip().splitlines()[0]
                   if str(e).strip() else "")) from e
        return _outcome(kind, data)

    def _cancel(self, force):
        refs, self._refs = list(self._refs.values()), {}
        if refs:
            ray = self._ray()
            for ref in refs:
                try:
                    ray.cancel(ref, force=force)
                except Exception:   # already finished, or gone with Ray
                    pass

    def cancel_pending(self):
        self._cancel(force=False)

    def abort_everything(self, ensure_ready=True):
        self._cancel(force=True)


BACKENDS: dict = {
    "loky": ProcessBackend,
    "processes": ProcessBackend,
    "multiprocessing": MultiprocessingBackend,
    "threading": ThreadingBackend,
    "threads": ThreadingBackend,
    "sequential": SequentialBackend,
}
EXTERNAL_BACKENDS: dict = {"dask": _register_dask, "ray": _register_ray}
_DEFAULT_BACKEND = ["loky"]


# ======================================================================
# CONFIGURATION: parallel_config, parallel_backend, the backend registry
# ======================================================================
class _Unset:
    """Marker for 'not given: take it from the active configuration'."""

    def __repr__(self):
        return "<unset>"


_UNSET: Any = _Unset()
_DEFAULTS = {"n_jobs": None, "verbose": 0, "temp_folder": None,
             "max_nbytes": _DEFAULT_MAX_NBYTES, "mmap_mode": _DEFAULT_MMAP_MODE,
             "prefer": None, "require": None, "progress": None}


class InvalidParameterError(ValueError, TypeError):
    """A parameter has a value of the wrong type (both a ValueError, as
    joblib raises, and a TypeError)."""


class UnknownBackendError(KeyError, ValueError):
    """No backend is registered under this name (a KeyError and a
    ValueError)."""

    def __str__(self):
        return self.args[0]


def _check_n_jobs(n_jobs, name="n_jobs"):
    if n_jobs is None:
        return None
    if isinstance(n_jobs, bool) or not hasattr(n_jobs, "__index__"):
        raise InvalidParameterError(
            "%s could not be converted to int: it must be None or an int "
            "such as 2 or -1 (got %r)" % (name, n_jobs))
    n_jobs = operator.index(n_jobs)
    if n_jobs == 0:
        raise ValueError("%s == 0 in Parallel has no meaning; use None, a "
                         "positive int or a negative int (got 0)" % name)
    return n_jobs


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError("%s=%r is not valid; expected one of %s"
                         % (name, value, ", ".join(map(repr, choices))))
    return value


def _check_verbose(value):
    number = int(value) if isinstance(value, bool) else _as_int(value)
    if number is None:
        raise InvalidParameterError("verbose must be an int (got %r)"
                                    % (value,))
    return number


def _check_common(values):
    """Validate the parameters shared by Parallel and parallel_config."""
    checks = {
        "n_jobs": _check_n_jobs,
        "verbose": _check_verbose,
        "temp_folder": lambda v: v if v is None or isinstance(
            v, (str, os.PathLike)) else _raise(InvalidParameterError(
                "temp_folder must be a path or None (got %r)" % (v,))),
        "max_nbytes": lambda v: (_parse_nbytes(v), v)[1],
        "mmap_mode": lambda v: _check_choice("mmap_mode", v,
                                             (None, "r", "r+", "w+", "c")),
        "prefer": lambda v: v if v in (None, "processes", "threads") else
        _raise(ValueError("prefer=%s is not a valid backend hint, expected "
                          "one of ('processes', 'threads', None)" % (v,))),
        "require": lambda v: v if v in (None, "sharedmem") else
        _raise(ValueError("require=%s is not a valid backend constraint, "
                          "expected one of ('sharedmem', None)" % (v,))),
        "progress": lambda v: v if v is None or isinstance(v, bool) or
        callable(v) else _raise(InvalidParameterError(
            "progress must be True, False, None or a callable "
            "progress(n_done, n_total) (got %r)" % (v,))),
    }
    for key, value in values.items():
        if value is not _UNSET and key in checks:
            values[key] = checks[key](value)
    if values.get("prefer") == "processes" and \
            values.get("require") == "sharedmem":
        raise ValueError("prefer='processes' and require='sharedmem' are "
                         "inconsistent settings")
    return values


def _raise(error):
    raise error


def _backend_factory(name):
    """The registered factory for ``name`` (registering an external backend
    on first use), or UnknownBackendError naming the registered ones."""
    factory = BACKENDS.get(name)
    if factory is None and name in EXTERNAL_BACKENDS:
        EXTERNAL_BACKENDS[name]()
        factory = BACKENDS.get(name)
    if factory is None:
        raise UnknownBackendError(
            "Invalid backend: %r is not registered; registered backends: "
            "%s (register others with register_parallel_backend)" % (
                name, ", ".join(sorted(set(BACKENDS) | set(EXTERNAL_BACKENDS)))))
    return factory


def _is_mp_context(value):
    return hasattr(value, "Pool") and hasattr(value, "get_start_method")


def _make_backend(spec, nesting_level=None):
    """A backend instance from a name, a (name, params) pair, an instance or
    a multiprocessing context.

    The one resolver used by Parallel and the context managers.
    """
    if isinstance(spec, ParallelBackendBase):
        backend = spec
    elif _is_mp_context(spec):
        # 'multiprocessing' with the context's start method (as joblib)
        backend = MultiprocessingBackend()
        method = spec.get_start_method(allow_none=True)   # the module: None
        if method is not None:
            backend.start_method = method
    else:
        name, params = (spec, {}) if not isinstance(spec, tuple) else spec
        if not isinstance(name, str):
            raise InvalidParameterError(
                "backend must be a name such as 'loky' or 'threading', or a "
                "ParallelBackendBase instance (got %r)" % (name,))
        backend = _backend_factory(name)(**params)
        if not isinstance(backend, ParallelBackendBase):
            raise InvalidParameterError("the factory of backend %r returned "
                                        "%r, not a ParallelBackendBase"
                                        % (name, backend))
    if backend.nesting_level is None:
        backend.nesting_level = nesting_level or 0
    return backend


def _active_backend():
    """(backend, n_jobs) of the active configuration (no prefer/require)."""
    cfg = _ACTIVE_CONFIG.get() or {}
    spec = cfg.get("backend")
    if spec is None:
        backend = _make_backend(_DEFAULT_BACKEND[0])
    else:
        backend = _make_backend(spec)
    return backend, cfg.get("n_jobs")


class parallel_config:
    """Set the default backend and parameters of Parallel in a block, as
    joblib's ``parallel_config``.

    Each given keyword overrides the enclosing configuration; keywords not
    given are inherited.  The configuration is context-local
    (:mod:`contextvars`): it applies to the current thread (or asyncio
    task) and to tasks run by our backends, not to threads the block starts
    by other means.  Active from construction (so
    ``cfg = parallel_config(...)`` ... ``cfg.unregister()`` works too).

    Parameters
    ----------
    backend : str or ParallelBackendBase, optional
        Registered name (``'loky'``, ``'processes'``, ``'multiprocessing'``,
        ``'threading'``, ``'sequential'``, ``'dask'``, ``'ray'``, or one
        registered with :func:`register_parallel_backend`), an instance, or
        a :mod:`multiprocessing` context.
    n_jobs : int or None, optional
        Workers for ``Parallel()`` calls in the block (-1: all CPUs).
    verbose : int, optional
        Progress message level (see :class:`Parallel`).
    temp_folder : str, optional
        Folder for shared segments.
    max_nbytes : int, str or None, optional
        Auto-memmapping threshold in bytes (``'1M'``).
    mmap_mode : {None, 'r', 'r+', 'w+', 'c'}, optional
        Mode of auto-memmapped inputs in workers.
    prefer : {None, 'processes', 'threads'}, optional
        Soft hint used when no backend is chosen.
    require : {None, 'sharedmem'}, optional
        Hard constraint: thread-based backend.
    inner_max_num_threads : int, optional
        Native threads per worker process (process backends only).
    progress : bool or callable, optional
        As :class:`Parallel`'s ``progress``.
    **backend_params
        Passed to the backend's constructor (``backend`` must be a name).

    Raises
    ------
    ValueError
        Bad values (naming the parameter), parameters that need a backend
        name, or ``inner_max_num_threads`` for a backend without support.
    KeyError
        Unknown backend name (:class:`UnknownBackendError`, also a
        ValueError).
    """

    def __init__(self, backend=_UNSET, *, n_jobs=_UNSET, verbose=_UNSET,
                 temp_folder=_UNSET, max_nbytes=_UNSET, mmap_mode=_UNSET,
                 prefer=_UNSET, require=_UNSET, inner_max_num_threads=_UNSET,
                 progress=_UNSET, **backend_params):
        given = _check_common(dict(
            n_jobs=n_jobs, verbose=verbose, temp_folder=temp_folder,
            max_nbytes=max_nbytes, mmap_mode=mmap_mode, prefer=prefer,
            require=require, progress=progress))
        old = _ACTIVE_CONFIG.get()
        config = dict(old or {})
        config.update((k, v) for k, v in given.items() if v is not _UNSET)
        if inner_max_num_threads is not _UNSET and \
                inner_max_num_threads is not None:
            backend_params["inner_max_num_threads"] = _check_positive_int(
                "inner_max_num_threads", inner_max_num_threads)
        self.backend_instance = None
        if backend is not _UNSET and backend is not None:
            if isinstance(backend, ParallelBackendBase) or _is_mp_context(
                    backend):
                if backend_params:
                    raise ValueError("backend parameters %s need a backend "
                                     "name, not an instance"
                                     % sorted(backend_params))
                spec = backend
            else:
                spec = (backend, backend_params)
            parent = (old or {}).get("backend")
            level = parent.nesting_level if isinstance(
                parent, ParallelBackendBase) else 0
            # One instance for the block, as joblib: Parallel() in the block
            # holds it (and each call runs on its own copy of it).
            self.backend_instance = _make_backend(spec, level)
            config["backend"] = self.backend_instance
        elif backend_params:
            raise ValueError("inner_max_num_threads and backend parameters "
                             "%s are only supported when backend is not None "
                             "(they need a backend name)"
                             % sorted(backend_params))
        elif backend is None:
            config["backend"] = None
        self.config = config
        self._old = old
        self._token = _ACTIVE_CONFIG.set(config)

    def __enter__(self):
        """The configuration in force in the block, every key (as joblib's:
        ``backend`` (an instance, or None), ``n_jobs``, ``verbose``, ... and
        ``progress``)."""
        return {"backend": None, **_DEFAULTS, **self.config}

    def __exit__(self, *exc_info):
        self.unregister()

    def unregister(self):
        """Restore the configuration that was active at construction."""
        try:
            _ACTIVE_CONFIG.reset(self._token)
        except (ValueError, RuntimeError):
            _ACTIVE_CONFIG.set(self._old)


class parallel_backend(parallel_config):
    """Legacy form of :class:`parallel_config`, as joblib's
    ``parallel_backend``: ``backend`` is required and ``n_jobs`` defaults
    to -1 (all CPUs).  ``with`` returns ``(backend_instance, n_jobs)``.
    Parameters and errors as :class:`parallel_config`."""

    def __init__(self, backend, n_jobs=-1, inner_max_num_threads=None,
                 **backend_params):
        super().__init__(backend, n_jobs=n_jobs,
                         inner_max_num_threads=inner_max_num_threads,
                         **backend_params)

    def __enter__(self):
        return self.backend_instance, self.config.get("n_jobs")


def _check_positive_int(name, value):
    number = _as_int(value)
    if number is None or number < 1:
        raise ValueError("%s must be a positive int (got %r)" % (name, value))
    return number


def register_parallel_backend(name: str, factory: Callable[..., Any],
                              make_default: bool = False) -> None:
    """Register a backend factory under ``name``, as joblib's function.

    Parameters
    ----------
    name : str
        Name for ``Parallel(backend=name)`` and ``parallel_config(name)``.
    factory : callable
        Returns a :class:`ParallelBackendBase`; called with the backend
        parameters given to ``parallel_config`` (a subclass works).
    make_default : bool, default False
        Make it the default backend of this process (process-wide, as
        joblib).

    Raises
    ------
    ValueError
        When ``name`` is not a non-empty string or ``factory`` is not
        callable.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("name must be a non-empty string (got %r)" % (name,))
    if not callable(factory):
        raise ValueError("factory must be callable (got %r)" % (factory,))
    BACKENDS[name] = factory
    if make_default:
        _DEFAULT_BACKEND[0] = name


def effective_n_jobs(n_jobs: Optional[int] = -1) -> int:
    """Number of workers ``n_jobs`` means for the active backend, as
    joblib's function: -1 is every CPU, -2 all but one, None the active
    configuration's n_jobs (1 by default).

    Raises
    ------
    ValueError
        For 0 or a value that is not an int (naming it).
    """
    n_jobs = _check_n_jobs(n_jobs)
    if n_jobs == 1:
        return 1
    backend, cfg_n_jobs = _active_backend()
    if n_jobs is None:
        n_jobs = cfg_n_jobs
    return backend.effective_n_jobs(n_jobs)


# ======================================================================
# PARALLEL: validation, dispatch, retrieval, return_as, progress, abort
# ======================================================================
class _TextBar:
    """One-line progress bar on stderr (used when tqdm is not installed)."""

    def __init__(self, total):
        self.total, self.start = total, time.monotonic()

    def __call__(self, done, total):
        elapsed = time.monotonic() - self.start
        if total:
            filled = int(30 * done / total)
            text = "\r[%s%s] %d/%d %.1fs" % ("#" * filled, "." * (30 - filled),
                                             done, total, elapsed)
        else:
            text = "\r%d done %.1fs" % (done, elapsed)
        sys.stderr.write(text + ("\n" if total and done >= total else ""))
        sys.stderr.flush()

    def close(self):
        pass


class _TqdmBar:
    def __init__(self, tqdm, total):
        self.bar = tqdm(total=total)

    def __call__(self, done, total):
        if total is not None and self.bar.total != total:
            self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self):
        self.bar.close()


def _progress_reporter(progress, total):
    """A callable(done, total) for ``progress`` and a close function."""
    if callable(progress) and not isinstance(progress, bool):
        return progress, None
    try:
        from tqdm.auto import tqdm  # type: ignore
        bar = _TqdmBar(tqdm, total)
    except ImportError:
        bar = _TextBar(total)
    return bar, bar.close


def _batch_finished(queue, batch, out):
    """A backend's completion callback (any thread): the batch no longer
    runs, whenever the caller gets to its result."""
    batch.finished = time.monotonic()
    queue.put((batch, out))


class _Call:
    """The state of one call of a Parallel instance (caller's thread)."""

    def __init__(self, parallel, backend, n_jobs, iterable, n_tasks):
        self.parallel = parallel
        self.backend = backend
        self.n_jobs = n_jobs
        self.n_tasks = n_tasks        # len(iterable), when it has one
        self.buffer = _TaskBuffer(iter(iterable))
        self.size_message = None    # auto-batching news for verbose >= 10
        self.exhausted = False
        import queue
        self.queue = queue.SimpleQueue()
        self.inflight = collections.deque()
        self.ready = collections.deque()
        self.ordered = parallel.return_as != "generator_unordered"
        self.lazy = parallel.return_as != "list"
        self.outstanding = 0
        self.n_pulled = self.n_done = self.n_batches = 0
        self.start_time = time.time()
        self.closed_reason = None
        self.active = True
        self.last_total = None      # the total in the latest progress report
        sequential = isinstance(backend, SequentialBackend)
        pre = parallel.pre_dispatch
        if pre == "all":
            value, self.pre_dispatch_amount = sys.maxsize, 0
        else:
            value = pre if isinstance(pre, int) else \
                _eval_pre_dispatch(pre, n_jobs)
            if value < 1:
                raise ValueError("pre_dispatch=%r gives %d tasks for n_jobs=%d;"
                                 " it must give at least 1" % (pre, value,
                                                               n_jobs))
            self.pre_dispatch_amount = value   # joblib's progress arithmetic
        # batches dispatched ahead; the sequential backend computes lazily
        self.window = 1 if sequential else value
        # Until a first batch ends, at most pre_dispatch tasks are read from
        # the input (as joblib: its islice of the first pre_dispatch items).
        self.initial = pre != "all" and not sequential
        self.freed_s = 0.0     # latest end of a batch (see _check_deadlines)
        batcher = parallel._batcher
        # joblib's n_jobs=1 reads batch_size tasks at a time from the input
        # and runs them one at a time.
        self.sequential_read = None
        if sequential:
            self.batcher = _AutoBatcher(fixed=1)
            self.sequential_read = parallel.batch_size \
                if isinstance(parallel.batch_size, int) else 1
        elif parallel.batch_size != "auto":
            self.batcher = _AutoBatcher(fixed=parallel.batch_size)
        elif backend.batch_duration_band_s is None or (
                parallel.timeout is not None and
                not backend.reports_task_starts):
            # (a timeout must see single tasks where starts are not reported)
            self.batcher = _AutoBatcher(fixed=1)
        elif batcher is not None and parallel._managed is not None:
            self.batcher = batcher            # stats persist in a with block
        else:
            self.batcher = _AutoBatcher(*backend.batch_duration_band_s)
            if parallel._managed is not None:
                parallel._batcher = self.batcher
        nested = backend.get_nested_backend()
        # joblib's older contract returned the backend alone
        nested, nested_n_jobs = nested if isinstance(nested, tuple) else \
            (nested, None)
        self.nested_config = _ACTIVE_CONFIG.get() if sequential else {
            "backend": nested, "n_jobs": nested_n_jobs}
        self.track_starts = parallel.timeout is not None
        progress = parallel.progress
        self.report, self.close_report = (None, None) if not progress else \
            _progress_reporter(progress, self.n_tasks)

    # -- dispatch ------------------------------------------------------------
    def dispatch_more(self):
        if self.closed_reason is not None:
            raise RuntimeError(self.closed_reason)
        backend, q = self.backend, self.queue
        while not self.exhausted and self.outstanding < self.window:
            remaining = None if self.n_tasks is None else \
                self.n_tasks - self.n_pulled
            size = self.batcher.next_size(self.n_jobs, remaining)
            if self.size_message is not None:   # when joblib prints it
                self.parallel._print(self.size_message)
                self.size_message = None
            func, tasks = self._take(size)
            if not tasks:
                # used up, or the first pre_dispatch tasks are all out
                self.exhausted = self.buffer.iterator is None
                break
            batch = _Batch(tasks, self.nested_config, self.n_batches,
                           self.n_pulled, func)
            batch.track_starts = self.track_starts
            self.n_pulled += len(tasks)
            self.n_batches += 1
            self.outstanding += 1
            self.inflight.append(batch)
            batch.submitted_s = time.monotonic()
            batch.future = backend.submit(batch, functools.partial(
                _batch_finished, q, batch))

    def _take(self, size):
        """Up to ``size`` tasks as ``(func, tasks)`` (see :class:`_Batch`;
        no tasks once the input is used up).  For an input of unknown
        length, read ``size * n_jobs`` tasks ahead (as joblib does) so that
        the end of the input is seen early enough to shrink the last
        batches."""
        buffer = self.buffer
        if self.sequential_read is not None:
            if not len(buffer):
                buffer.read(self.sequential_read)
            return buffer.take(size)
        room = sys.maxsize
        if self.initial:   # spread the first pre_dispatch tasks over workers
            room = self.pre_dispatch_amount - self.n_pulled - len(buffer)
            size = min(size, max(1, self.pre_dispatch_amount // self.n_jobs))
        if self.n_tasks is not None:
            buffer.read(min(size - len(buffer), room))
        else:
            buffer.read(min(size * self.n_jobs - len(buffer), room))
            if buffer.iterator is None:   # the end is in sight: balance it
                size = self.batcher.next_size(self.n_jobs, len(buffer))
        return buffer.take(size)

    # -- retrieval -----------------------------------------------------------
    def wait_one(self):
        """Take one finished batch off the queue (raising its error)."""
        import queue
        timeout = self.parallel.timeout
        while True:
            # A bounded wait lets Ctrl-C through promptly.
            wait_s = _RESULT_POLL_INTERVAL_S
            if timeout is not None:
                wait_s = self._check_deadlines(timeout)
            try:
                batch, out = self.queue.get(timeout=wait_s)
            except queue.Empty:
                continue
            break
        if self.initial:
            # As joblib: from now on, as many batches in flight as the first
            # pre_dispatch tasks made (one new batch per finished batch).
            self.initial = False
            self.window = max(1, self.n_batches)
        self.freed_s = max(self.freed_s, batch.finished)
        results = self.backend.retrieve_result_callback(out)
        if len(results) != len(batch):
            raise RuntimeError("backend %s returned %d results for a batch of "
                               "%d tasks" % (type(self.backend).__name__,
                                             len(results), len(batch)))
        batch.results, batch.done = results, True
        self.n_done += len(batch)
        duration = batch.duration_s
        if duration is None:
            duration = time.monotonic() - batch.submitted_s
        message = self.batcher.record(len(batch), duration)
        if message is not None and self.parallel.verbose >= 10:
            self.size_message = message   # printed if another batch goes
        if not self.lazy:
            self.outstanding -= 1
        if not self.ordered:
            self.inflight.remove(batch)
            self.ready.append(batch)
        if self.report is not None:
            self.last_total = self.n_tasks if not self.exhausted \
                else self.n_pulled
            self.report(self.n_done, self.last_total)
        self.parallel.print_progress()

    def _check_deadlines(self, timeout):
        now = time.monotonic()
        nearest = 0.05
        track = self.backend.reports_task_starts
        # Without start reports, the oldest unfinished batches that the
        # backend can run at once run, each since a worker was free for it
        # (the latest end of a batch, or its submission), and a batch of k
        # tasks is overdue after k x timeout: then one of its tasks was.
        capacity = self.backend.max_running_batches(self.n_jobs)
        freed = max([self.freed_s] + [b.finished for b in self.inflight])
        for batch in self.inflight:
            if batch.finished:   # its result may wait for a slow consumer
                continue
            allowed = timeout
            if not track:
                if capacity <= 0:
                    break        # the rest wait in the backend's queue
                capacity -= 1
                if batch.task_started_s is None:
                    batch.task_started_s = max(batch.submitted_s, freed)
                allowed = timeout * len(batch)
            started = batch.task_started_s
            if started is None:
                continue
            left = started + allowed - now
            if left <= 0:
                raise _parallel_timeout_error()(
                    "task %d ran longer than timeout=%s seconds" % (
                        batch.start + batch.running, timeout) if track else
                    "a task ran longer than timeout=%s seconds (batch of "
                    "tasks %d..%d)" % (timeout, batch.start,
                                       batch.start + len(batch) - 1))
            nearest = min(nearest, left)
        return nearest

    def print_progress(self):
        """joblib's progress lines, formats and frequencies."""
        verbose = self.parallel.verbose
        if verbose <= 0:
            return
        width = (int(math.log10(self.n_tasks)) + 1) if self.n_tasks else 3
        elapsed = time.time() - self.start_time
        done = self.n_done
        if self.exhausted and done == self.n_pulled:
            return   # the final line is printed by finish()
        if not self.exhausted:
            if _verbosity_filter(self.n_batches, verbose):
                return
            if self.n_tasks is not None:
                self.parallel._print("Done %*d out of %*d | elapsed: %s" % (
                    width, done, width, self.n_tasks,
                    _short_format_time(elapsed)))
            else:
                pad = " " * (len("out of ") + width - len("tasks"))
                self.parallel._print("Done %*d tasks %s| elapsed: %s" % (
                    width, done, pad, _short_format_time(elapsed)))
            return
        total = self.n_pulled
        cursor = total - done + 1 - self.pre_dispatch_amount
        frequency = total // verbose + 1
        if done + 1 == total or cursor % frequency:
            return
        remaining = elapsed / done * (total - done)
        self.parallel._print("Done %*d out of %*d | elapsed: %s remaining: %s"
                             % (width, done, width, total,
                                _short_format_time(elapsed),
                                _short_format_time(remaining)))

    # -- the loop ------------------------------------------------------------
    def chunks(self, primed=False):
        """Yield lists of results (one per batch) in the chosen order,
        inside the backend's ``retrieval_context()`` (entered once per
        call, as joblib).  ``primed``: first yield None once the first
        batches are dispatched (the caller's ``next`` starts the work)."""
        try:
            with self.backend.retrieval_context():
                yield from self._chunks(primed)
        finally:
            self.finish()     # also when the context itself failed

    def _chunks(self, primed):
        try:
            self.backend.start_call()
            if self.parallel.verbose > 0 and not isinstance(
                    self.backend, SequentialBackend):
                self.parallel._print("Using backend %s with %d concurrent "
                                     "workers." % (type(self.backend).__name__,
                                                   self.n_jobs))
            self.dispatch_more()
            if primed:
                yield None
            while True:
                if self.closed_reason is not None:
                    raise RuntimeError(self.closed_reason)
                if self.ordered:
                    while self.inflight and self.inflight[0].done:
                        batch = self.inflight.popleft()
                        if self.lazy:
                            self.outstanding -= 1
                        yield batch.results
                else:
                    while self.ready:
                        batch = self.ready.popleft()
                        if self.lazy:
                            self.outstanding -= 1
                        yield batch.results
                self.dispatch_more()
                if not self.inflight and self.exhausted:
                    break
                if self.closed_reason is not None:
                    raise RuntimeError(self.closed_reason)
                self.wait_one()
            if self.report is not None and self.n_tasks is None and \
                    self.n_done and self.last_total is None:
                # the end of the input was seen after the last report
                self.report(self.n_done, self.n_done)
            if isinstance(self.backend, SequentialBackend):
                self.parallel.print_progress()   # joblib's last call
            if self.parallel.verbose > 0:
                self.parallel._print("Done %*d out of %*d | elapsed: %s "
                                     "finished" % (
                                         3 if not self.n_tasks else
                                         int(math.log10(self.n_tasks)) + 1,
                                         self.n_done,
                                         3 if not self.n_tasks else
                                         int(math.log10(self.n_tasks)) + 1,
                                         self.n_done, _short_format_time(
                                             time.time() - self.start_time)))
        except Exception as e:
            if not self.active:   # already stopped (the with block ended)
                raise
            if isinstance(e, _parallel_timeout_error()):
                self.backend.abort_everything(ensure_ready=True)
            else:
                self.backend.cancel_pending()
            raise
        except BaseException:   # Ctrl-C, generator closed or dropped
            if sys.is_finalizing():
                # A generator dropped at interpreter exit: the pools were
                # stopped at exit and the tracker removes the files; a pool
                # lock may be held by a daemon thread that will never run
                # again, so touch nothing.
                self.active = False
            elif self.active:
                self.backend.abort_everything(ensure_ready=True)
            raise
        finally:
            self.finish()

    def finish(self):
        if not self.active:
            return
        self.active = False
        self.buffer = _TaskBuffer(None)   # drop what was read ahead
        if self.close_report is not None:
            self.close_report()
        try:
            self.backend.stop_call()
        finally:
            if self.parallel._managed is None:
                self.backend.terminate()


class _ListOutput:
    """Type marker: a Parallel whose calls return lists."""


class _IteratorOutput:
    """Type marker: a Parallel whose calls return generators."""


_Output = TypeVar("_Output")
_Self = TypeVar("_Self", bound="Parallel")


class Parallel(Generic[_Output]):
    """Run ``delayed`` calls in parallel workers, as joblib's ``Parallel``.

    ``Parallel(n_jobs=2)(delayed(f)(x) for x in data)`` returns
    ``[f(x) for x in data]`` computed by 2 workers.  Every parameter left
    out comes from the active :class:`parallel_config`, then the defaults.

    Parameters
    ----------
    n_jobs : int or None, default None
        Maximum number of concurrent workers.  None: the active
        configuration's, else 1 (run in the caller, no pool).  -1: every
        CPU (:func:`cpu_count`), -k: ``max(cpu_count() + 1 - k, 1)``.
    backend : str or ParallelBackendBase, optional
        ``'loky'``/``'processes'`` (default; reusable worker processes),
        ``'multiprocessing'``, ``'threading'``, ``'sequential'``,
        ``'dask'``, ``'ray'``, a name registered with
        :func:`register_parallel_backend`, an instance, or a
        :mod:`multiprocessing` context (the 'multiprocessing' backend with
        that start method, as joblib).  Libraries should prefer
        ``prefer``/``require``.
    return_as : {'list', 'generator', 'generator_unordered'}, default 'list'
        A list in input order, a generator in input order, or a generator in
        completion order.  Generators pull input only as they are consumed
        (at most ``pre_dispatch`` tasks ahead); closing or dropping one stops
        the work.
    prefer : {None, 'processes', 'threads'}, default None
        Soft hint used when no backend was chosen.
    require : {None, 'sharedmem'}, default None
        Hard constraint: run on a thread-based backend.
    verbose : int, default 0
        Progress messages in joblib's format: to stderr below 50, to stdout
        from 50; more lines as it grows, every batch above 10; none at 0 or
        below.
    timeout : float or None, default None
        Seconds a single task may run, counted from when it starts.  An
        overdue task raises :class:`ParallelTimeoutError` in the caller
        within a fraction of a second; process workers running the call are
        killed; threads cannot be, so they finish in the background while
        nothing new starts.
    pre_dispatch : 'all', int or str, default '2 * n_jobs'
        Tasks taken from the input ahead of the workers: an int, 'all', or
        an arithmetic expression of numbers and ``n_jobs``.
    batch_size : int or 'auto', default 'auto'
        Tasks per batch.  'auto' sizes batches from measured durations so
        that each lasts 0.2 to 2 s on processes (shorter on threads), with
        smaller batches at the end of an input of known length.
    temp_folder : str, optional
        Folder for shared segments (default: ``PARALLEL_TEMP_FOLDER``,
        ``JOBLIB_TEMP_FOLDER``, /dev/shm when it has room, the system temp
        folder).
    max_nbytes : int, str or None, default '1M'
        Arrays larger than this many bytes reach process workers as memory
        maps of one copy in ``temp_folder``; None disables it.
    mmap_mode : {None, 'r', 'r+', 'w+', 'c'}, default 'r'
        Mode of those memory maps.  'r+' and 'w+': workers write into the
        call's copy, and the elements they changed are copied into the
        caller's array when the call ends (joblib loses those writes; the
        copy keeps a second copy of the array until then); 'c': each worker
        writes into a private copy that nobody sees.  None disables
        auto-memmapping.
    progress : bool or callable, optional
        True: a tqdm bar (a text bar on stderr without tqdm); a callable:
        ``progress(n_done, n_total_or_None)`` called in the caller's thread
        after every completed batch, for every backend and n_jobs=1.
    **backend_kwargs
        Passed to the backend's ``configure`` (process backends:
        ``initializer``, ``initargs``, ``idle_worker_timeout``,
        ``inner_max_num_threads``).

    Raises
    ------
    ValueError
        At construction, for a bad value of any parameter (the message names
        it and the value).
    KeyError
        For an unknown backend name (:class:`UnknownBackendError`, also a
        ValueError).

    Notes
    -----
    Task exceptions are re-raised in the caller with their type; from
    processes the worker traceback is attached as ``__cause__`` (or a note
    when the worker's own ``__cause__`` survived); threads keep the original
    traceback.  A worker process that dies raises
    :class:`TerminatedWorkerError`.  ``with Parallel(...) as p:`` keeps the
    same workers for every call in the block.

    Examples
    --------
    >>> from math import modf
    >>> r = Parallel(n_jobs=1)(delayed(modf)(i / 2.) for i in range(4))
    >>> res, i = zip(*r)
    >>> res
    (0.0, 0.5, 0.0, 0.5)
    """

    # For type checkers: calls return list[R] for return_as='list' and
    # Iterator[R] for the generator modes.
    @overload
    def __init__(self: "Parallel[_ListOutput]", n_jobs: Optional[int] = ...,
                 backend: Any = ..., return_as: Literal["list"] = ...,
                 **kwargs: Any) -> None: ...

    @overload
    def __init__(self: "Parallel[_IteratorOutput]",
                 n_jobs: Optional[int] = ..., backend: Any = ..., *,
                 return_as: Literal["generator", "generator_unordered"],
                 **kwargs: Any) -> None: ...

    @overload
    def __init__(self: "Parallel[Any]", n_jobs: Optional[int] = ...,
                 backend: Any = ..., return_as: str = ...,
                 **kwargs: Any) -> None: ...

    def __init__(self, n_jobs: Optional[int] = None, backend: Any = None,
                 return_as: str = "list", verbose: Any = _UNSET,
                 timeout: Optional[float] = None,
                 pre_dispatch: Union[str, int] = _DEFAULT_PRE_DISPATCH,
                 batch_size: Union[str, int] = "auto",
                 temp_folder: Any = _UNSET, max_nbytes: Any = _UNSET,
                 mmap_mode: Any = _UNSET, prefer: Any = _UNSET,
                 require: Any = _UNSET, progress: Any = _UNSET,
                 **backend_kwargs: Any):
        cfg = _ACTIVE_CONFIG.get() or {}
        given = _check_common(dict(
            n_jobs=_UNSET if n_jobs is None else n_jobs, verbose=verbose,
            temp_folder=temp_folder, max_nbytes=max_nbytes,
            mmap_mode=mmap_mode, prefer=prefer, require=require,
            progress=progress))
        values = {k: (v if v is not _UNSET else cfg.get(k, _DEFAULTS[k]))
                  for k, v in given.items()}
        self.n_jobs = values["n_jobs"]
        self.verbose = values["verbose"]
        self.temp_folder = values["temp_folder"]
        self.max_nbytes = values["max_nbytes"]
        self.mmap_mode = values["mmap_mode"]
        self.progress = values["progress"]
        self.return_as = _check_choice(
            "return_as", return_as, ("list", "generator",
                                     "generator_unordered"))
        if timeout is not None:
            seconds = _as_seconds(timeout)
            if seconds is None or not seconds > 0:
                raise ValueError("timeout must be a positive number of "
                                 "seconds or None (got %r)" % (timeout,))
            timeout = seconds
        self.timeout = timeout
        if not isinstance(pre_dispatch, str):
            count = _as_int(pre_dispatch)
            if count is None or count < 1:
                raise ValueError("pre_dispatch must be 'all', a positive int "
                                 "or an expression such as '2 * n_jobs' (got "
                                 "%r)" % (pre_dispatch,))
            pre_dispatch = count
        if isinstance(pre_dispatch, str) and pre_dispatch != "all":
            _eval_pre_dispatch(pre_dispatch, 1)   # syntax check now
        self.pre_dispatch = pre_dispatch
        if not (isinstance(batch_size, str) and batch_size == "auto"):
            size = _as_int(batch_size)
            if size is None or size < 1:
                raise ValueError("batch_size must be 'auto' or a positive int "
                                 "(got %r)" % (batch_size,))
            batch_size = size
        self.batch_size = batch_size
        inner = backend_kwargs.pop("inner_max_num_threads", None)
        if inner is not None:
            inner = _check_positive_int("inner_max_num_threads", inner)
        _check_pool_options(backend_kwargs.get("initializer"),
                            backend_kwargs.get("initargs", ()),
                            backend_kwargs.get("idle_worker_timeout"),
                            backend_kwargs.get("maxtasksperchild"))
        self._backend_kwargs = backend_kwargs
        self._backend = self._choose_backend(backend, cfg, values,
                                             n_jobs is not None)
        if self.n_jobs is None:       # as joblib: the backend's default
            self.n_jobs = self._backend.default_n_jobs
        if inner is not None:
            if not self._backend.supports_inner_max_num_threads:
                raise ValueError("inner_max_num_threads=%r: the %s backend "
                                 "cannot limit native threads in its workers"
                                 % (inner, type(self._backend).__name__))
            import copy
            self._backend = copy.copy(self._backend)   # not the block's
            self._backend.inner_max_num_threads = inner
        if self.return_as != "list" and \
                not self._backend.supports_return_generator:
            raise ValueError("backend %r does not support return_as=%r (its "
                             "supports_return_generator flag is False)"
                             % (_backend_name(self._backend), self.return_as))
        self._managed = None      # (backend, n_jobs) inside a with block
        self._n_tasks_hint: Optional[int] = None   # the call's, if known
        self._batcher = None
        self._call: Optional[_Call] = None
        self._lock = threading.Lock()

    def _choose_backend(self, backend, cfg, values, n_jobs_given):
        level = 0
        parent = cfg.get("backend")
        if isinstance(parent, ParallelBackendBase):
            level = parent.nesting_level or 0
        explicit = backend is not None and backend is not _UNSET
        if explicit:
            chosen = _make_backend(backend, level)
        elif cfg.get("backend") is not None:
            chosen = _make_backend(cfg["backend"], level)
        elif values["prefer"] == "threads" or values["require"] == "sharedmem":
            chosen = ThreadingBackend(nesting_level=level)
        else:
            chosen = _make_backend(_DEFAULT_BACKEND[0], level)
        if values["require"] == "sharedmem" and not chosen.supports_sharedmem:
            if explicit:
                raise ValueError("backend %r does not support shared memory "
                                 "(require='sharedmem'); use 'threading'"
                                 % _backend_name(chosen))
            if self.verbose >= 10:     # joblib's line, on stdout
                print("Using ThreadingBackend as joblib backend instead of "
                      "%s as the latter does not provide shared memory "
                      "semantics." % type(chosen).__name__)
            if cfg.get("backend") is not None and not n_jobs_given:
                # The configuration's n_jobs was for the backend that the
                # constraint set aside: the default applies (as joblib).
                self.n_jobs = None
            chosen = ThreadingBackend(nesting_level=level)
        return chosen

    def __repr__(self):
        return "%s(n_jobs=%s)" % (type(self).__name__, self.n_jobs)

    def print_progress(self) -> None:
        """Print the verbose progress lines; called after each finished
        batch, as joblib's.  Subclasses override it to drive their own
        progress display from :attr:`n_completed_tasks` and
        :attr:`n_dispatched_tasks` (joblib's recipe); see also
        ``progress=``."""
        if self._call is not None:
            self._call.print_progress()

    @property
    def n_completed_tasks(self) -> int:
        """Tasks of the current (or last) call whose results arrived."""
        return self._call.n_done if self._call is not None else 0

    @property
    def n_dispatched_tasks(self) -> int:
        """Tasks of the current (or last) call sent to workers."""
        return self._call.n_pulled if self._call is not None else 0

    @property
    def n_dispatched_batches(self) -> int:
        """Batches of the current (or last) call sent to workers."""
        return self._call.n_batches if self._call is not None else 0

    def _print(self, message):
        write = sys.stderr.write if self.verbose < 50 else sys.stdout.write
        write("[%s]: %s\n" % (self, message))

    def _configure(self):
        """A configured copy of the backend and its effective n_jobs."""
        import copy
        backend = copy.copy(self._backend)
        kwargs = dict(self._backend_kwargs)
        if isinstance(backend, ProcessBackend):
            kwargs.update(temp_folder=self.temp_folder,
                          max_nbytes=self.max_nbytes, mmap_mode=self.mmap_mode)
        for _ in range(4):
            try:
                n_jobs = backend.configure(n_jobs=self.n_jobs, parallel=self,
                                           **kwargs)
                break
            except FallbackToBackend as fallback:
                backend = fallback.backend
                if backend.nesting_level is None:
                    backend.nesting_level = self._backend.nesting_level
                kwargs = {}
        if n_jobs is None or n_jobs < 1:
            raise RuntimeError("%s has no active worker" % type(backend).__name__)
        if self.timeout is not None and not backend.supports_timeout:
            warnings.warn("The backend class %r does not support timeout. "
                          "You have set 'timeout=%g' in Parallel but the "
                          "'timeout' parameter will not be used."
                          % (type(backend).__name__, self.timeout),
                          UserWarning, stacklevel=3)
        return backend, n_jobs

    def __enter__(self: _Self) -> _Self:
        if self._managed is not None:
            raise RuntimeError("this Parallel instance is already in a with "
                               "block; use the instance of that block")
        self._managed = self._configure()
        return self

    def __exit__(self, *exc_info):
        call = self._call
        if call is not None and call.active:
            call.closed_reason = ("the Parallel context was closed while its "
                                  "output generator was still in use")
            call.backend.abort_everything(ensure_ready=False)
            call.finish()
        managed, self._managed = self._managed, None
        self._batcher = None
        if managed is not None:
            managed[0].terminate()

    @overload
    def __call__(self: "Parallel[_ListOutput]",
                 iterable: Iterable[DelayedCall[_R]]) -> List[_R]: ...

    @overload
    def __call__(self: "Parallel[_IteratorOutput]",
                 iterable: Iterable[DelayedCall[_R]]) -> Iterator[_R]: ...

    @overload
    def __call__(self: "Parallel[Any]",
                 iterable: Iterable[DelayedCall[_R]]) -> Any: ...

    def __call__(self, iterable: Iterable[DelayedCall[_R]]
                 ) -> Union[List[_R], Iterator[_R]]:
        """Run the delayed calls of ``iterable``.

        Returns
        -------
        list or generator
            Per ``return_as``.  Empty input gives ``[]``.

        Raises
        ------
        Exception
            The first task exception, with its original type.
        RuntimeError
            When this instance is still running a previous call.
        """
        with self._lock:
            if self._call is not None and self._call.active:
                raise RuntimeError(
                    "This Parallel instance is already running; wait for the "
                    "previous call to finish, or close its output generator")
            n_tasks = len(iterable) if hasattr(  # type: ignore[arg-type]
                iterable, "__len__") else None
            # read by process backends: no more workers than tasks
            self._n_tasks_hint = n_tasks
            try:
                backend, n_jobs = self._managed or self._configure()
            finally:       # not for a later with block of this instance
                self._n_tasks_hint = None
            try:
                call = _Call(self, backend, n_jobs, iterable, n_tasks)
            except BaseException:
                if self._managed is None:
                    backend.terminate()
                raise
            self._call = call
        if self.return_as == "list":
            out: list = []
            for chunk in call.chunks():
                out.extend(chunk)
            return out
        # As joblib: the work starts now, not at the first next(); and a
        # generator closed or dropped before any next() still ends the call.
        chunks = call.chunks(primed=True)
        next(chunks)
        results = _flatten(chunks)
        next(results)
        return results


def _flatten(chunks):
    """The results of ``chunks``, after a first None (see __call__);
    closing or dropping it closes ``chunks``, whatever the Python version
    does with the frame of a generator closed before it started."""
    try:
        yield None
        for chunk in chunks:
            yield from chunk
    finally:
        chunks.close()


def _backend_name(backend):
    for name, factory in BACKENDS.items():
        if type(backend) is factory:
            return name
    return type(backend).__name__


# ======================================================================
# PERSISTENCE: dump / load with memory-mappable arrays
# ======================================================================
_DUMP_MAGIC = b"PARALLEL-DUMP-1\n"
_DUMP_MAGIC_ZLIB = b"PARALLEL-DUMPZ1\n"
_DUMP_ALIGN = 64


class _DumpPickler(pickle.Pickler):
    """Pickles numpy arrays (shared arrays and memmaps included, by value)
    as references to raw blocks that follow the pickle."""

    def __init__(self, file, arrays):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.arrays = arrays
        self.offset = 0

    def persistent_id(self, obj):
        np = sys.modules.get("numpy")
        if np is None or not isinstance(obj, np.ndarray) or \
                obj.dtype.hasobject:
            return None
        if type(obj) is not np.ndarray and not isinstance(obj, np.memmap):
            return None   # a subclass pickles as it defines (masks kept)
        order = _memory_order(obj)
        self.offset = -(-self.offset // _DUMP_ALIGN) * _DUMP_ALIGN
        entry = ("ndarray", _dtype_token(obj.dtype), obj.shape, order,
                 self.offset)
        self.arrays.append((obj, order, self.offset))
        self.offset += obj.nbytes
        return entry


def _dump_to(f, value):
    """Write the uncompressed format to the binary file object ``f``."""
    np = _numpy() if "numpy" in sys.modules else None
    arrays: list = []
    head = io.BytesIO()
    _DumpPickler(head, arrays).dump(value)
    body = head.getvalue()
    written = f.write(_DUMP_MAGIC + len(body).to_bytes(8, "little") + body)
    start = -(-written // _DUMP_ALIGN) * _DUMP_ALIGN
    position = written
    for array, order, offset in arrays:
        f.write(b"\0" * (start + offset - position))
        flat = np.ascontiguousarray(array.ravel(order=order)).view(np.uint8)
        f.write(memoryview(flat).cast("B"))
        position = start + offset + array.nbytes


# Compression methods of dump (joblib's names, standard library codecs):
# method -> file name extension that selects it when ``compress`` is a level.
_DUMP_COMPRESSORS = {"zlib": ".z", "gzip": ".gz", "bz2": ".bz2",
                     "lzma": ".lzma", "xz": ".xz"}
_DUMP_DEFAULT_LEVEL = 3


def _compression(compress, filename):
    """(method, level) from joblib's ``compress`` (bool, 0-9, a method
    name, or (method, level)) and the file name; level 0: uncompressed.
    As joblib, a level alone takes its method from the file name's
    extension ('.z', '.gz', '.bz2', '.lzma', '.xz'; zlib otherwise), which
    also compresses a file so named at level 0.  ValueError in joblib's
    words for a bad value."""
    methods = list(_DUMP_COMPRESSORS)
    method = None
    if isinstance(compress, tuple):
        if len(compress) != 2:
            raise ValueError(
                "Compress argument tuple should contain exactly 2 elements: "
                "(compress method, compress level), you passed %r"
                % (compress,))
        method, compress = compress
        if compress is None:
            compress = _DUMP_DEFAULT_LEVEL
    elif isinstance(compress, str):
        method, compress = compress, _DUMP_DEFAULT_LEVEL
    if method is not None and method not in _DUMP_COMPRESSORS:
        raise ValueError(
            'Non valid compression method given: "%s". Possible values are '
            "%s%s" % (method, methods, " (lz4 is not supported)"
                      if method == "lz4" else ""))
    if isinstance(compress, bool):
        compress = _DUMP_DEFAULT_LEVEL if compress else 0
    if not isinstance(compress, int) or not 0 <= compress <= 9:
        raise ValueError('Non valid compress level given: "%s". Possible '
                         "values are [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], True, "
                         "False, a method of %s or (method, level)"
                         % (compress, methods))
    if method is None and isinstance(filename, str):
        for name, extension in _DUMP_COMPRESSORS.items():
            if filename.endswith(extension):
                method = name
                compress = compress or _DUMP_DEFAULT_LEVEL
    return method or "zlib", compress


def _compressed_writer(method, level, f):
    """A binary file object that compresses into ``f`` (not closing it)."""
    if method == "gzip":
        import gzip
        return gzip.GzipFile(fileobj=f, mode="wb", compresslevel=level,
                             mtime=0)
    if method == "bz2":
        import bz2
        return bz2.BZ2File(f, "wb", compresslevel=max(level, 1))
    import lzma
    return lzma.LZMAFile(f, "wb", preset=level, format=lzma.FORMAT_XZ
                         if method == "xz" else lzma.FORMAT_ALONE)


def _decompressed(head, f):
    """The content of a compressed dump whose first bytes are ``head`` and
    the rest ``f``, or None when it is not compressed."""
    if head.startswith(_DUMP_MAGIC_ZLIB):
        import zlib
        return zlib.decompress(f.read())
    rest = None
    if head.startswith(b"\x1f\x8b"):
        import gzip
        rest = gzip.decompress
    elif head.startswith(b"BZh"):
        import bz2
        rest = bz2.decompress
    elif head.startswith(b"\xfd7zXZ\x00") or head.startswith(b"\x5d\x00\x00"):
        import lzma
        rest = lzma.decompress
    elif head[:1] == b"\x78":       # joblib's '.z': a bare zlib stream
        import zlib
        rest = zlib.decompress
    if rest is None:
        return None
    return rest(head + f.read())


def _check_file_target(filename, method, parameter="filename"):
    """``filename`` as a path string, or the file object itself when it has
    ``method`` ('read' or 'write'); ValueError otherwise (as joblib)."""
    if hasattr(filename, method):
        return filename
    if isinstance(filename, (str, bytes, os.PathLike)):
        return os.fspath(filename)
    raise ValueError("%s must be a file name or a binary file object with "
                     "%s() (got %r of type %s)" % (
                         parameter, method, filename, type(filename).__name__))


def _native_byte_order(array):
    """``array`` in native byte order (a copy when it was not), as
    joblib's load does for arrays read into memory."""
    dtype = array.dtype
    if dtype.names is not None:   # swapped when every field is (joblib)
        swap = all(not dtype.fields[name][0].isnative for name in dtype.names)
    else:
        swap = dtype.subdtype is None and not dtype.isnative
    return array.astype(dtype.newbyteorder("=")) if swap else array


def dump(value: Any, filename: Any, compress: Any = 0,
         protocol: Optional[int] = None) -> list:
    """Save ``value`` so that :func:`load` can memory-map its arrays, as
    joblib's ``dump``.

    Uncompressed, numpy arrays anywhere inside ``value`` (without object
    fields; shared arrays and memmaps are saved by value) are written as
    raw, 64-byte aligned blocks after a pickle of the rest; other ndarray
    subclasses (masked arrays, recarrays, ...) are pickled as they define,
    so they come back with their class and mask.  The format is this
    module's own: joblib's ``load`` cannot read it, and :func:`load` reads
    plain pickles but not joblib's files.

    Parameters
    ----------
    value : object
        Picklable object, typically an array or a container of arrays.
    filename : str, os.PathLike or binary file object
        Target file (overwritten), or an object with ``write``.
    compress : bool, int, str or tuple, default 0
        A level 0-9 (True: 3), a method ('zlib', 'gzip', 'bz2', 'lzma',
        'xz'; level 3) or ``(method, level)``, as joblib's.  A level alone
        compresses with the method that the file name's extension names
        ('.z', '.gz', '.bz2', '.lzma', '.xz', which compress even at level
        0, as in joblib), else zlib.  Compressed files load into memory (no
        memory mapping).
    protocol : int, optional
        Ignored (kept for joblib's signature): protocol 5 is used.

    Returns
    -------
    list of str
        ``[filename]`` (``[]`` for a file object).

    Raises
    ------
    ValueError
        For a bad ``compress``, or a ``filename`` that is neither a path nor
        a file object.
    OSError
        When the file cannot be written (a partial file is removed).
    pickle.PicklingError
        When ``value`` cannot be pickled.
    """
    filename = _check_file_target(filename, "write")
    method, level = _compression(compress, filename)
    to_object = hasattr(filename, "write")
    try:
        with contextlib.ExitStack() as stack:
            f = filename if to_object else stack.enter_context(
                open(filename, "wb"))
            if level and method == "zlib":
                import zlib
                plain = io.BytesIO()
                _dump_to(plain, value)
                f.write(_DUMP_MAGIC_ZLIB
                        + zlib.compress(plain.getbuffer(), level))
            elif level:
                with _compressed_writer(method, level, f) as z:
                    _dump_to(z, value)
            else:
                _dump_to(f, value)
    except BaseException:
        if not to_object:
            try:
                os.unlink(filename)
            except OSError:
                pass
        raise
    return [] if to_object else [filename]


def load(filename: Any, mmap_mode: Optional[str] = None) -> Any:
    """Read what :func:`dump` wrote, as joblib's ``load``.

    Parameters
    ----------
    filename : str, os.PathLike or binary file object
        A file written by :func:`dump` (compressed or not), or a plain
        pickle (as a ``.pkl`` model file; compressed too), or an object
        with ``read``.
    mmap_mode : {None, 'r', 'r+', 'w+', 'c'}, default None
        None reads arrays into memory, in native byte order (as joblib); a
        mode returns :class:`numpy.memmap` views of the file ('w+' is
        opened as 'r+' so data is kept), in the byte order saved.  Ignored,
        with a warning, for compressed files and file objects.

    Returns
    -------
    object
        The saved value.

    Raises
    ------
    ValueError
        Neither a file written by :func:`dump` nor a pickle (for example a
        file of joblib's format), a bad ``mmap_mode``, or a ``filename``
        that is neither a path nor a file object.

    Notes
    -----
    Loading unpickles, which can run any code: as with joblib's ``load``
    and ``pickle``, load only files you trust.
    """
    _check_choice("mmap_mode", mmap_mode, (None, "r", "r+", "w+", "c"))
    filename = _check_file_target(filename, "read")
    if hasattr(filename, "read"):
        f = filename
        name = getattr(f, "name", repr(f))
    else:
        name = filename
        f = open(filename, "rb")
    try:
        magic = f.read(len(_DUMP_MAGIC))
        if not magic and f is filename and getattr(f, "seekable",
                                                   lambda: False)():
            f.seek(0)     # a buffer just written and not rewound (joblib
            magic = f.read(len(_DUMP_MAGIC))   # reads it from the start)
        data = None if magic == _DUMP_MAGIC else _decompressed(magic, f)
        if data is not None:
            if mmap_mode is not None:
                warnings.warn('mmap_mode "%s" is not compatible with '
                              'compressed file %s. "%s" flag will be '
                              "ignored." % (mmap_mode, name, mmap_mode),
                              UserWarning, stacklevel=2)
            if not data.startswith(_DUMP_MAGIC):    # a compressed pickle
                return _load_pickle(data, name)
            return _load_from(io.BytesIO(data[len(_DUMP_MAGIC):]), name,
                              None)
        if magic != _DUMP_MAGIC:     # a plain pickle (sklearn's .pkl files)
            return _load_pickle(magic + f.read(), name)
        if mmap_mode is not None and hasattr(filename, "read"):
            warnings.warn("mmap_mode=%r is ignored for a file object"
                          % (mmap_mode,), UserWarning, stacklevel=2)
            mmap_mode = None
        return _load_from(f, filename, mmap_mode)
    finally:
        if f is not filename:
            f.close()


def _load_pickle(data, name):
    """Unpickle the bytes of a file that :func:`dump` did not write (a
    plain pickle, compressed or not), as joblib's load does; ValueError
    for a file of joblib's own format (its arrays follow the pickle)."""
    if b"joblib.numpy_pickle" in data[:4096]:
        raise ValueError("%s was written by joblib.dump, whose format only "
                         "joblib.load reads" % (name,))
    try:
        return pickle.loads(data)
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise ValueError("%s is neither a file written by parallel.dump nor "
                         "a pickle (%s: %s)" % (name, type(e).__name__,
                                                _safe_str(e))) from e


def _load_from(f, filename, mmap_mode):
    np = _numpy()
    size = int.from_bytes(f.read(8), "little")
    body = f.read(size)
    start = -(-(len(_DUMP_MAGIC) + 8 + size) // _DUMP_ALIGN) * _DUMP_ALIGN
    position = [len(_DUMP_MAGIC) + 8 + size]
    mode = "r+" if mmap_mode == "w+" else mmap_mode

    class Unpickler(pickle.Unpickler):
        def persistent_load(self, pid):
            _, dtype, shape, order, offset = pid
            if isinstance(dtype, list):     # files of parallel 0.1.0
                dtype = [tuple(x) for x in dtype]
            dtype = np.dtype(dtype)
            count = int(np.prod(shape, dtype=np.int64))
            if mode is not None and count:
                return np.memmap(filename, dtype=dtype, mode=mode,
                                 offset=start + offset, shape=shape,
                                 order=order)
            skip = start + offset - position[0]
            f.read(skip)     # file objects may not seek: read forward
            data = f.read(count * dtype.itemsize)
            position[0] = start + offset + len(data)
            array = np.frombuffer(data, dtype=dtype, count=count).copy()
            return _native_byte_order(array.reshape(shape, order=order))

    return Unpickler(io.BytesIO(body)).load()


# ======================================================================
# COMMAND LINE: python -m parallel {demo,info}
# ======================================================================
_DEMO_LENGTH_BINS = 16   # line lengths 0-9, 10-19, ..., 150 and more
_DEMO_FILES, _DEMO_BYTES, _DEMO_TOKENS, _DEMO_LINES, _DEMO_FAILED = range(5)


def _demo_count_file(path, token_hist, length_hist, totals):
    """Tokenize one file and add its counts into the shared histograms with
    scatter atomic adds.  Returns None, or the failure text."""
    import tokenize
    np = _numpy()
    try:
        with open(path, "rb") as f:
            data = f.read()
        types_ = [t.type for t in tokenize.tokenize(io.BytesIO(data).readline)]
    except (OSError, SyntaxError, UnicodeDecodeError, tokenize.TokenError,
            ValueError) as e:
        atomic_add(totals, _DEMO_FAILED, 1)
        return "%s: %s: %s" % (path, type(e).__name__, e)
    lines = data.splitlines()
    lengths = np.fromiter((len(line) for line in lines), dtype=np.int64,
                          count=len(lines)) // 10
    atomic_add(token_hist, np.asarray(types_, dtype=np.int64), 1)
    atomic_add(length_hist, np.minimum(lengths, _DEMO_LENGTH_BINS - 1), 1)
    atomic_add(totals, np.array([_DEMO_FILES, _DEMO_BYTES, _DEMO_TOKENS,
                                 _DEMO_LINES]),
               np.array([1, len(data), len(types_), len(lines)]))
    return None


def _demo_files(root, limit):
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in ("site-packages",
                                                      "dist-packages",
                                                      "__pycache__"))
        files.extend(os.path.join(folder, n) for n in sorted(names)
                     if n.endswith(".py"))
    return files[:limit] if limit else files


def _demo(args):
    import sysconfig
    import token
    np = _numpy()
    root = args.path or sysconfig.get_paths()["stdlib"]
    files = _demo_files(root, args.limit)
    if not files:
        print("no .py files under %s" % root)
        return 2
    print("parallel %s demo: tokenizing %d .py files under %s%s" % (
        __version__, len(files), root,
        " (first %d; --limit 0 for all)" % args.limit if args.limit else ""))
    n_bins = token.N_TOKENS + 1

    def run(n_jobs, backend, hists, progress):
        t0 = time.perf_counter()
        failures = Parallel(n_jobs=n_jobs, backend=backend, progress=progress)(
            [delayed(_demo_count_file)(path, *hists) for path in files])
        return time.perf_counter() - t0, [f for f in failures if f]

    shared = (shared_zeros(n_bins, np.int64),
              shared_zeros(_DEMO_LENGTH_BINS, np.int64),
              shared_zeros(5, np.int64))
    wall, failures = run(args.n_jobs, args.backend, shared,
                         not args.no_progress)
    local = (np.zeros(n_bins, np.int64), np.zeros(_DEMO_LENGTH_BINS, np.int64),
             np.zeros(5, np.int64))
    seq_wall, _ = run(1, "sequential", local, False)
    totals = shared[2]
    print("files: %d   bytes: %d   lines: %d   tokens: %d   failed: %d" % (
        totals[_DEMO_FILES], totals[_DEMO_BYTES], totals[_DEMO_LINES],
        totals[_DEMO_TOKENS], totals[_DEMO_FAILED]))
    top = np.argsort(shared[0])[::-1][:6]
    print("top token types: " + ", ".join(
        "%s %d" % (token.tok_name.get(int(i), i), shared[0][i]) for i in top))
    print("lines by length (per 10 chars): " + " ".join(
        str(int(x)) for x in shared[1]))
    for failure in failures[:5]:
        print("  could not tokenize %s" % failure)
    n_jobs = 1 if args.backend == "sequential" else \
        effective_n_jobs(args.n_jobs)
    print("parallel run (n_jobs=%d, backend=%s): %.2f s; sequential run: "
          "%.2f s; speed-up: %.2fx" % (n_jobs, args.backend or "loky", wall,
                                       seq_wall, seq_wall / wall))
    same = all(np.array_equal(a, b) for a, b in zip(shared, local))
    print("parallel and sequential histograms are %s" % (
        "identical" if same else "DIFFERENT"))
    return 0 if same else 1


def _info(args):
    print("parallel %s (%s)" % (__version__, __file__))
    print("python %s (%s)" % (sys.version.split()[0], sys.executable))
    print("cpu_count(): %d (os.cpu_count(): %s)" % (cpu_count(),
                                                    os.cpu_count()))
    print("start method: %s" % _default_start_method())
    print("temp folder: %s" % _temp_root())
    print("C helper: %s" % ("built" if shm_helper_available(build=False)
                            else "not built (atomics unavailable; run "
                                 "`python build_shm.py`)"))
    print("multiprocessing available: %s" % _multiprocessing_available())
    print("backends: %s (registered on first use: %s)" % (
        ", ".join(sorted(BACKENDS)),
        ", ".join(sorted(set(EXTERNAL_BACKENDS) - set(BACKENDS))) or "-"))
    for name, module, note in (("dask", "distributed", "backend 'dask'"),
                               ("tqdm", "tqdm", "progress=True bar"),
                               ("ray", "ray", "backend 'ray'"),
                               ("spark", "pyspark", "no backend yet")):
        found = importlib.util.find_spec(module) is not None
        print("  %s: %s (%s)" % (name, "installed" if found else
                                 "not installed", note))
    return 0


def _cli(argv=None):
    """``python -m parallel {demo,info}``."""
    import argparse
    parser = argparse.ArgumentParser(prog="python -m parallel")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="tokenize a tree of .py files in "
                          "parallel and check against a sequential run")
    demo.add_argument("path", nargs="?", help="folder (default: the standard "
                      "library of this interpreter)")
    demo.add_argument("--n-jobs", type=int, default=-1)
    demo.add_argument("--backend", default=None)
    demo.add_argument("--limit", type=int, default=0,
                      help="at most this many files (default 0: all)")
    demo.add_argument("--no-progress", action="store_true")
    sub.add_parser("info", help="version, backends, start method, temp "
                   "folder, C helper, cpu_count()")
    args = parser.parse_args(argv)
    if args.command == "demo" and args.limit < 0:
        parser.error("--limit must be 0 (all files) or positive (got %d)"
                     % args.limit)
    try:
        return _demo(args) if args.command == "demo" else _info(args)
    except (ValueError, KeyError, OSError) as e:
        parser.exit(2, "python -m parallel %s: error: %s\n"
                    % (args.command, e))


if __name__ == "__main__":
    # Run the module under its importable name, so that tasks refer to
    # functions workers can import (not to this __main__ copy).
    _real = importlib.import_module(__spec__.name if __spec__ else "parallel")
    sys.exit(_real._cli())
