#!/usr/bin/env python3
"""Benchmark suite for ``parallel`` against joblib 1.6 and plain baselines.

Every measurement runs in a fresh interpreter started with ``sys.executable``
(never through a pyenv shim), the implementations of one workload are run in
alternating order across repeats (A B C, C B A, ...), and the table reports
medians and ratios computed in the same run.  No figure is hard-coded.

Usage::

    python3 benchmarks/bench.py            # full run, 7 repeats (about 2 min on 2 cores)
    python3 benchmarks/bench.py --quick    # 3 repeats (about 1 min on 2 cores)
    python3 benchmarks/bench.py --only cpu_tasks,import_time --json out.json

Workloads: see ``WORKLOADS`` below or ``--list``.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
N_JOBS = 2


# ---------------------------------------------------------------------------
# Task functions.  They live in this module, which the workers import as
# ``bench`` (PYTHONPATH points at this folder), so nothing is pickled by value.
# ---------------------------------------------------------------------------

def busy(n):
    """Pure-Python busy loop of ``n`` iterations."""
    s = 0
    for i in range(n):
        s += i
    return s


def calibrate_busy(target_s=0.020):
    """Iterations of :func:`busy` that take about ``target_s`` here."""
    n = 100_000
    busy(n)
    best = min(_timed(busy, n) for _ in range(5))
    return max(1, int(n * target_s / best))


def _timed(f, *a):
    t = time.perf_counter()
    f(*a)
    return time.perf_counter() - t


def sleep_return(seconds, i):
    time.sleep(seconds)
    return i


def big_result(i):
    import numpy as np
    return np.ones(1_250_000) * i


def chunk_sum(x, i):
    return float(x[i * 1000:(i + 1) * 1000].sum())


def inc_scalar(a, n):
    import parallel
    add = parallel.atomic_add
    for _ in range(n):
        add(a, 0, 1)
    return n


def inc_view(a, n):
    import parallel
    add = parallel.AtomicView(a).add
    for _ in range(n):
        add(0, 1)
    return n


def inc_floor(a, n):
    """The floor: the C helper's fetch-add through cffi with a cached
    pointer, no checks at all (what no public call can beat)."""
    import parallel
    t = parallel._atomic_target(a, "floor")
    add, ptr = t.fns[0], t.ptr
    for _ in range(n):
        add(ptr, 0, 1)
    return n


def inc_locked(v, n):
    lock = v.get_lock()
    for _ in range(n):
        with lock:
            v.value += 1


def _indices(seed, size, bins):
    import numpy as np
    return np.random.default_rng(seed).integers(0, bins, size)


def scatter_chunk(hist, indices, start, stop):
    import parallel
    t = time.perf_counter()
    parallel.atomic_add(hist, indices[start:stop], 1)
    return time.perf_counter() - t


def bincount_chunk(indices, start, stop, bins):
    import numpy as np
    return np.bincount(indices[start:stop], minlength=bins)


# ---------------------------------------------------------------------------
# Memory accounting (PSS of a process tree, from /proc).
# ---------------------------------------------------------------------------

def _descendants(root):
    parents = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(parents.get(pid, ()))
    return out


def _pss_kb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pss_mb(root=None):
    pids = _descendants(root or os.getpid())
    return sum(_pss_kb(p) for p in pids) / 1024.0, len(pids)


def shm_used_mb():
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return 0.0
    return (st.f_blocks - st.f_bfree) * st.f_frsize / 2**20


# ---------------------------------------------------------------------------
# Measurements: one function per (workload, implementation), run in a child.
# Each returns a dict of numbers (seconds unless the key says otherwise).
# ---------------------------------------------------------------------------

def _lib(impl):
    if impl == "parallel":
        import parallel as lib
    else:
        import joblib as lib
    return lib


def _timed_map(impl, n, **options):
    """Seconds for ``n`` calls of abs on a warm pool of ``impl``: the
    stdlib pools' map, or Parallel(**options) of parallel/joblib."""
    if impl in ("pool", "threadpool"):
        from multiprocessing.pool import Pool, ThreadPool
        with (Pool if impl == "pool" else ThreadPool)(N_JOBS) as pool:
            pool.map(abs, range(2))
            t = time.perf_counter()
            out = pool.map(abs, range(n))
            dt = time.perf_counter() - t
    else:
        lib = _lib(impl)
        lib.Parallel(n_jobs=N_JOBS, **options)(lib.delayed(abs)(i) for i in range(2))
        t = time.perf_counter()
        out = lib.Parallel(n_jobs=N_JOBS, **options)(lib.delayed(abs)(i) for i in range(n))
        dt = time.perf_counter() - t
    assert len(out) == n and out[-1] == n - 1
    return dt


def m_tiny_tasks_processes(impl, p):
    return {"time": _timed_map(impl, p["n"], batch_size="auto")}


def m_cpu_tasks(impl, p):
    n_iter, n_tasks = p["iters"], p["tasks"]
    if impl == "sequential":
        busy(n_iter)
        t = time.perf_counter()
        for _ in range(n_tasks):
            busy(n_iter)
        return {"time": time.perf_counter() - t}
    lib = _lib(impl)
    lib.Parallel(n_jobs=N_JOBS)(lib.delayed(busy)(10) for _ in range(2))
    t = time.perf_counter()
    lib.Parallel(n_jobs=N_JOBS)(lib.delayed(busy)(n_iter) for _ in range(n_tasks))
    return {"time": time.perf_counter() - t}


def m_cold_first_call(impl, p):
    if impl == "parallel":
        from parallel import Parallel, delayed
    else:
        from joblib import Parallel, delayed
    t = time.perf_counter()
    r1 = Parallel(n_jobs=N_JOBS)(delayed(abs)(i) for i in range(2))
    t1 = time.perf_counter()
    r2 = Parallel(n_jobs=N_JOBS)(delayed(abs)(i) for i in range(2))
    t2 = time.perf_counter()
    assert r1 == r2 == [0, 1]
    steady = []
    for _ in range(10):
        t3 = time.perf_counter()
        Parallel(n_jobs=N_JOBS)(delayed(abs)(i) for i in range(2))
        steady.append(time.perf_counter() - t3)
    return {"cold": t1 - t, "warm": t2 - t1, "steady": statistics.median(steady)}


def m_generator_first_result(impl, p):
    lib = _lib(impl)
    d = p["sleep"]
    if impl == "sequential":
        t = time.perf_counter()
        gen = (sleep_return(d, i) for i in range(p["tasks"]))
        next(gen)
        return {"time": time.perf_counter() - t}
    # warm both workers (tasks that last long enough to occupy each of them)
    lib.Parallel(n_jobs=N_JOBS)(lib.delayed(sleep_return)(0.05, i) for i in range(N_JOBS))
    t = time.perf_counter()
    gen = lib.Parallel(n_jobs=N_JOBS, return_as="generator")(
        lib.delayed(sleep_return)(d, i) for i in range(p["tasks"]))
    first = next(gen)
    dt = time.perf_counter() - t
    rest = list(gen)
    total = time.perf_counter() - t
    assert first == 0 and rest[-1] == p["tasks"] - 1
    return {"time": dt, "total": total}


def m_large_results(impl, p):
    n = p["tasks"]
    if impl == "sequential":
        big_result(0)
        t = time.perf_counter()
        out = [big_result(i) for i in range(n)]
        dt = time.perf_counter() - t
    else:
        lib = _lib(impl)
        lib.Parallel(n_jobs=N_JOBS)(lib.delayed(abs)(i) for i in range(2))
        t = time.perf_counter()
        out = lib.Parallel(n_jobs=N_JOBS)(lib.delayed(big_result)(i) for i in range(n))
        dt = time.perf_counter() - t
    assert len(out) == n and out[-1][0] == n - 1
    return {"time": dt}


def m_large_input(impl, p):
    import numpy as np
    n = p["tasks"]
    x = np.full(p["elems"], 1.0)
    if impl == "parallel_shared":
        import parallel
        x = parallel.shared_array(x)
        impl = "parallel"
    if impl == "sequential":
        t = time.perf_counter()
        out = [chunk_sum(x, i) for i in range(n)]
        dt = time.perf_counter() - t
        return {"time": dt}
    lib = _lib(impl)
    # warm-up runs the same task on a small array, so that imports and
    # first-use allocations in the workers are not counted as extra memory
    small = np.ones(2000)
    lib.Parallel(n_jobs=N_JOBS)(lib.delayed(chunk_sum)(small, i) for i in range(2))
    time.sleep(0.05)
    before, _ = tree_pss_mb()
    shm_before = shm_used_mb()
    t = time.perf_counter()
    out = lib.Parallel(n_jobs=N_JOBS)(lib.delayed(chunk_sum)(x, i) for i in range(n))
    dt = time.perf_counter() - t
    time.sleep(0.05)
    after, nprocs = tree_pss_mb()
    shm_after = shm_used_mb()
    assert out == [1000.0] * n
    return {"time": dt, "extra_pss_mb": after - before,
            "extra_shm_mb": shm_after - shm_before, "procs": nprocs}


def m_threads_tiny(impl, p):
    n = p["n"]
    if impl == "sequential":
        t = time.perf_counter()
        out = [abs(i) for i in range(n)]
        dt = time.perf_counter() - t
        assert len(out) == n
    else:
        dt = _timed_map(impl, n, prefer="threads")
    return {"time": dt, "per_task_us": dt / n * 1e6}


def _lock_rate(total):
    import multiprocessing
    v = multiprocessing.Value("q", 0, lock=True)
    per = total // N_JOBS
    procs = [multiprocessing.Process(target=inc_locked, args=(v, per)) for _ in range(N_JOBS)]
    t = time.perf_counter()
    for pr in procs:
        pr.start()
    for pr in procs:
        pr.join()
    dt = time.perf_counter() - t
    return dt, v.value


def m_shared_counter(impl, p):
    total = p["total"]
    if impl == "lock":
        dt, value = _lock_rate(total)
    else:
        import numpy as np
        import parallel
        fn = {"scalar": inc_scalar, "view": inc_view,
              "floor": inc_floor}[impl]
        a = parallel.shared_zeros(1, np.int64)
        # warm pool: workers have imported numpy and loaded the C helper
        parallel.Parallel(n_jobs=N_JOBS)(
            parallel.delayed(parallel.atomic_add)(a, 0, 0) for i in range(2))
        t = time.perf_counter()
        parallel.Parallel(n_jobs=N_JOBS)(
            parallel.delayed(fn)(a, total // N_JOBS) for _ in range(N_JOBS))
        dt = time.perf_counter() - t
        value = int(a[0])
    return {"time": dt, "rate": total / dt, "exact": float(value == total)}


def m_scatter_histogram(impl, p):
    import numpy as np
    total, chunk, bins = p["total"], p["chunk"], p["bins"]
    # The update indices are made before timing: the workload is the
    # scatter-add, not the random number generator.
    indices = np.random.default_rng(0).integers(0, bins, total)
    spans = [(s, s + chunk) for s in range(0, total, chunk)]
    if impl == "lock":
        dt, value = _lock_rate(p["lock_total"])
        return {"time": dt, "rate": p["lock_total"] / dt, "exact": float(value == p["lock_total"])}
    if impl == "np_add_at":
        hist = np.zeros(bins, np.int64)
        t = time.perf_counter()
        for a, b in spans:
            np.add.at(hist, indices[a:b], 1)
        dt = time.perf_counter() - t
        return {"time": dt, "rate": total / dt, "exact": float(hist.sum() == total)}
    if impl == "joblib":
        import joblib
        # warm pool: workers have imported numpy
        joblib.Parallel(n_jobs=N_JOBS)(
            joblib.delayed(np.bincount)(indices[:10]) for i in range(2))
        t = time.perf_counter()
        parts = joblib.Parallel(n_jobs=N_JOBS)(
            joblib.delayed(bincount_chunk)(indices, a, b, bins)
            for a, b in spans)
        hist = np.sum(parts, axis=0)
        dt = time.perf_counter() - t
        return {"time": dt, "rate": total / dt, "exact": float(hist.sum() == total)}
    import parallel
    hist = parallel.shared_zeros(bins, np.int64)
    indices = parallel.shared_array(indices)   # shared input, as a user would
    # warm pool: workers have imported numpy and loaded the C helper
    parallel.Parallel(n_jobs=N_JOBS)(
        parallel.delayed(parallel.atomic_add)(hist, 0, 0) for i in range(2))
    t = time.perf_counter()
    inner = parallel.Parallel(n_jobs=N_JOBS)(
        parallel.delayed(scatter_chunk)(hist, indices, a, b)
        for a, b in spans)
    dt = time.perf_counter() - t
    return {"time": dt, "rate": total / dt, "atomic_s": sum(inner),
            "exact": float(int(hist.sum()) == total)}


IMPORT_SCRIPT = ("import time\nt = time.perf_counter()\nimport {mod}\n"
                 "print('@@RESULT@@{{\"time\": %r}}' % (time.perf_counter() - t))\n")


def m_calibrate(impl, p):
    return {"iters": calibrate_busy(p["target_s"])}


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------

def child_main(argv):
    func, impl, params = argv[0], argv[1], json.loads(argv[2])
    res = globals()["m_" + func](impl, params)
    sys.stdout.write("\n@@RESULT@@" + json.dumps(res) + "\n")
    sys.stdout.flush()


# Children get a bytecode cache even where PYTHONDONTWRITEBYTECODE=1 is set:
# without it parallel.py (a source checkout) is recompiled on every import, in
# every worker, while joblib's site-packages .pyc files exist.  The cache goes
# to a private PYTHONPYCACHEPREFIX, so the checkout is left untouched.
# --no-bytecode-cache keeps the environment as it is.
PYCACHE = os.path.join(__import__("tempfile").gettempdir(), "parallel-bench-pycache")
USE_PYCACHE = True


def child_env(pycache=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = HERE + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("PYTHONSTARTUP", None)
    if USE_PYCACHE if pycache is None else pycache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = PYCACHE
    return env


def prime_bytecode_cache(have_joblib):
    """Import everything once (parent and workers) so that .pyc files exist."""
    code = ("import numpy, parallel, bench, multiprocessing.pool, json\n"
            "parallel.Parallel(n_jobs=2)(parallel.delayed(abs)(i) for i in range(2))\n"
            "parallel.atomic_add(parallel.shared_zeros(1, 'int64'), 0, 1)\n")
    if have_joblib:
        code += "import joblib\njoblib.Parallel(n_jobs=2)(joblib.delayed(abs)(i) for i in range(2))\n"
    try:
        subprocess.run([sys.executable, "-c", code], env=child_env(), cwd=HERE,
                       capture_output=True, timeout=120)
    except subprocess.TimeoutExpired:
        pass


def run_child(func, impl, params, timeout, script=None, pycache=None):
    env = child_env(pycache)
    if script is None:
        cmd = [sys.executable, "-c", "import sys, bench; bench.child_main(sys.argv[1:])",
               func, impl, json.dumps(params)]
    else:
        cmd = [sys.executable, "-c", script]
    try:
        proc = subprocess.run(cmd, env=env, cwd=HERE, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return {"error": f"timeout after {timeout}s",
                "stderr": _text(e.stderr)[-4000:]}
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            return json.loads(line[len("@@RESULT@@"):])
    err = [ln for ln in (proc.stderr or "").strip().splitlines() if ln.strip()]
    msg = err[-1] if err else f"exit status {proc.returncode}, no result"
    return {"error": msg[:160], "stderr": (proc.stderr or "")[-4000:]}


def _text(b):
    if b is None:
        return ""
    return b.decode(errors="replace") if isinstance(b, bytes) else b


class Ctx:
    def __init__(self, repeats, quick, have_joblib, verbose):
        self.repeats, self.quick = repeats, quick
        self.have_joblib, self.verbose = have_joblib, verbose
        self.raw = {}

    def measure(self, key, func, impls, params, timeout, repeats=None, scripts=None,
                pycache=None):
        """Run each impl ``repeats`` times, alternating order; return medians."""
        repeats = repeats or self.repeats
        samples = {i: [] for i in impls}
        errors = {i: [] for i in impls}
        for r in range(repeats):
            order = impls if r % 2 == 0 else impls[::-1]
            for impl in order:
                if impl == "joblib" and not self.have_joblib:
                    errors[impl] = [{"error": "joblib not installed"}]
                    continue
                res = run_child(func, impl, params, timeout,
                                script=scripts and scripts[impl], pycache=pycache)
                if "error" in res:
                    errors[impl].append(res)
                    # a crash is reported, the other repeats still run
                    print(f"  [{key}] {impl} #{r} FAILED: {res['error']}\n"
                          + _indent(res.get("stderr", "")[-1500:]),
                          file=sys.stderr, flush=True)
                else:
                    samples[impl].append(res)
                    if self.verbose:
                        print(f"  [{key}] {impl} #{r}: {res}", file=sys.stderr, flush=True)
        self.raw[key] = {"params": params, "samples": samples, "errors": errors}
        out = {}
        for impl in impls:
            errs = errors[impl]
            if not samples[impl]:
                out[impl] = {"error": errs[0]["error"] if errs else "no result"}
                continue
            keys = samples[impl][0].keys()
            out[impl] = {k: statistics.median(s[k] for s in samples[impl]) for k in keys}
            out[impl]["n"] = len(samples[impl])
            if errs:
                out[impl]["failed"] = (f"{len(errs)}/{len(errs) + len(samples[impl])} runs "
                                       f"failed: {errs[0]['error']}")
        return out


def _indent(text):
    return "".join("      " + ln + "\n" for ln in text.splitlines())


def _ms(v):
    return f"{v * 1e3:.1f} ms" if v < 10 else f"{v:.2f} s"


def _cell(res, key="time", fmt=_ms):
    if res is None:
        return "-"
    if "error" in res:
        if res["error"] == "joblib not installed":
            return res["error"]
        return "ERROR: " + res["error"].replace("|", "/")
    note = f" ({res['failed']})".replace("|", "/") if "failed" in res else ""
    return fmt(res[key]) + note


def _ratio(a, b, key="time"):
    if not a or not b or "error" in a or "error" in b or not b[key]:
        return None
    return a[key] / b[key]


def _fmt_ratio(r):
    return "n/a" if r is None else f"{r:.3g}"


def _met(r, op, limit):
    if r is None:
        return "n/a"
    ok = r <= limit if op == "<=" else r >= limit if op == ">=" else r < limit
    return "yes" if ok else "**NO**"


def _rate(v):
    return f"{v / 1e6:.2f} M/s" if v >= 1e6 else f"{v / 1e3:.0f} k/s"


def wl_tiny_tasks_processes(c):
    n = 100_000
    m = c.measure("tiny_tasks_processes", "tiny_tasks_processes", ["parallel", "joblib", "pool"],
                  {"n": n}, 180)
    rj, rp = _ratio(m["parallel"], m["joblib"]), _ratio(m["parallel"], m["pool"])
    return [["tiny_tasks_processes (100k abs, n_jobs=2, warm)", _cell(m["parallel"]),
             _cell(m["joblib"]), "Pool.map: " + _cell(m["pool"]), _fmt_ratio(rj),
             f"parallel/Pool.map <= 1 (got {_fmt_ratio(rp)})", _met(rp, "<=", 1.0)]]


def wl_cpu_tasks(c):
    target = 0.020
    cal = run_child("calibrate", "-", {"target_s": target}, 60)
    if "error" in cal:
        return [["cpu_tasks", "ERROR: calibration " + cal["error"], "", "", "", "", ""]]
    params = {"iters": cal["iters"], "tasks": 64}
    m = c.measure("cpu_tasks", "cpu_tasks", ["parallel", "joblib", "sequential"], params, 120)
    sp = _ratio(m["sequential"], m["parallel"])
    sj = _ratio(m["sequential"], m["joblib"])
    return [[f"cpu_tasks (64 x 20 ms busy, {cal['iters']} iters, n_jobs=2, warm)",
             _cell(m["parallel"]), _cell(m["joblib"]), "sequential: " + _cell(m["sequential"]),
             _fmt_ratio(_ratio(m["parallel"], m["joblib"])),
             f"speed-up >= 1.95 (got {_fmt_ratio(sp)}; joblib {_fmt_ratio(sj)})",
             _met(sp, ">=", 1.95)]]


def wl_cold_first_call(c):
    m = c.measure("cold_first_call", "cold_first_call", ["parallel", "joblib"], {}, 60)
    rows = []
    for k, label in (("cold", "cold_first_call (first Parallel call, 2 tasks, after import)"),
                     ("warm", "warm_call (second call, 2 tasks)"),
                     ("steady", "warm_call steady state (median of calls 3-12; extra)")):
        r = _ratio(m["parallel"], m["joblib"], k)
        rows.append([label, _cell(m["parallel"], k), _cell(m["joblib"], k), "-",
                     _fmt_ratio(r), "<= 0.1 x joblib", _met(r, "<=", 0.1)])
    return rows


def wl_generator_first_result(c):
    d = 0.010
    m = c.measure("generator_first_result", "generator_first_result",
                  ["parallel", "joblib"], {"sleep": d, "tasks": 20}, 60)
    r = None if "error" in m["parallel"] else m["parallel"]["time"] / d
    rj = None if "error" in m["joblib"] else m["joblib"]["time"] / d
    return [["generator_first_result (20 x 10 ms sleep, warm)", _cell(m["parallel"]),
             _cell(m["joblib"]), "all 20: " + _cell(m["parallel"], "total"),
             _fmt_ratio(_ratio(m["parallel"], m["joblib"])),
             f"<= 1.2 x 10 ms (got {_fmt_ratio(r)}x; joblib {_fmt_ratio(rj)}x)",
             _met(r, "<=", 1.2)]]


def wl_large_results(c):
    m = c.measure("large_results", "large_results", ["parallel", "joblib", "sequential"],
                  {"tasks": 40}, 180)
    r = _ratio(m["parallel"], m["joblib"])
    return [["large_results (40 x 10 MB results, warm)", _cell(m["parallel"]),
             _cell(m["joblib"]), "sequential: " + _cell(m["sequential"]), _fmt_ratio(r),
             "<= 0.5 x joblib", _met(r, "<=", 0.5)]]


def wl_large_input(c):
    params = {"elems": 25_000_000, "tasks": 40}
    m = c.measure("large_input", "large_input",
                  ["parallel", "joblib", "parallel_shared", "sequential"], params, 180)
    r = _ratio(m["parallel"], m["joblib"])
    rs = _ratio(m["parallel_shared"], m["joblib"])

    def mb(v):
        return f"{v:+.2f} MB"

    def mem(res):
        if res is None or "error" in res:
            return _cell(res)
        return f"{mb(res['extra_pss_mb'])} PSS, {mb(res['extra_shm_mb'])} /dev/shm"

    def mem_met(res):
        if res is None or "error" in res:
            return "n/a"
        return "yes" if res["extra_pss_mb"] < 1.0 else "**NO**"

    return [
        ["large_input (200 MB array -> 40 tasks, warm)", _cell(m["parallel"]),
         _cell(m["joblib"]), "sequential: " + _cell(m["sequential"]), _fmt_ratio(r),
         "<= 0.5 x joblib", _met(r, "<=", 0.5)],
        ["large_input memory (PSS after - before, parent+workers)", mem(m["parallel"]),
         mem(m["joblib"]), "-", "n/a", "< 1 MB extra (parallel)", mem_met(m["parallel"])],
        ["large_input, array pre-shared (parallel.shared_array)", _cell(m["parallel_shared"]),
         _cell(m["joblib"]), "-", _fmt_ratio(rs), "<= 0.5 x joblib", _met(rs, "<=", 0.5)],
        ["large_input memory, pre-shared", mem(m["parallel_shared"]), mem(m["joblib"]), "-",
         "n/a", "< 1 MB extra (parallel)", mem_met(m["parallel_shared"])],
    ]


def wl_threads_tiny(c):
    n = 10_000
    m = c.measure("threads_tiny", "threads_tiny", ["parallel", "joblib", "threadpool"],
                  {"n": n}, 120)
    r = _ratio(m["parallel"], m["joblib"])

    def cell(res):
        return _cell(res, "per_task_us", lambda v: f"{v:.2f} us/task")

    return [["threads_tiny (10k abs, prefer='threads', warm)", cell(m["parallel"]),
             cell(m["joblib"]), "ThreadPool.map: " + cell(m["threadpool"]), _fmt_ratio(r),
             "<= 1/50 x joblib (0.02)", _met(r, "<=", 0.02)]]


def _exact(res):
    return "" if res is None or "error" in res or res.get("exact") == 1.0 else " INEXACT"


def wl_shared_counter(c):
    total = 1_000_000
    m = c.measure("shared_counter", "shared_counter",
                  ["scalar", "view", "floor", "lock"], {"total": total}, 240)
    c.lock_result = m["lock"]
    rows = []
    for impl, lim, label in (("scalar", 4, "atomic_add(a, 0, 1)"),
                             ("view", 8, "AtomicView(a).add(0, 1)")):
        r = _ratio(m["lock"], m[impl])  # time ratio == rate ratio inverted
        met = _met(r, ">=", lim)
        if _exact(m[impl]):
            met = "**NO** (inexact)"
        rows.append([f"shared_counter {label} (1M incr, 2 procs)",
                     _cell(m[impl], "rate", _rate) + _exact(m[impl]), "n/a (no atomics)",
                     "mp.Value lock: " + _cell(m["lock"], "rate", _rate) + _exact(m["lock"]),
                     "n/a", f">= {lim}x lock rate (got {_fmt_ratio(r)}x)", met])
    r = _ratio(m["lock"], m["floor"])
    rows.append(["shared_counter floor: bare cffi call, cached pointer, no "
                 "checks (reference; 1M incr, 2 procs)",
                 _cell(m["floor"], "rate", _rate) + _exact(m["floor"]),
                 "n/a (no atomics)",
                 "mp.Value lock: " + _cell(m["lock"], "rate", _rate),
                 "n/a", f"- (got {_fmt_ratio(r)}x lock rate)", "-"])
    return rows


def wl_scatter_histogram(c):
    params = {"total": 10_000_000, "chunk": 1_000_000, "bins": 1000}
    impls = ["parallel", "joblib", "np_add_at"]
    m = c.measure("scatter_histogram", "scatter_histogram", impls, params, 240)
    lock = getattr(c, "lock_result", None)
    if lock is None:
        lm = c.measure("scatter_histogram_lock", "scatter_histogram", ["lock"],
                       dict(params, lock_total=200_000), 120)
        lock = lm["lock"]
    r = None
    if "error" not in m["parallel"] and lock and "error" not in lock:
        r = m["parallel"]["rate"] / lock["rate"]
    met = _met(r, ">=", 100)
    if _exact(m["parallel"]):
        met = "**NO** (inexact)"
    extra = ""
    if "error" not in m["parallel"]:
        a_rate = params["total"] / (m["parallel"]["atomic_s"] / N_JOBS)
        extra = (f" (wall, indices made before timing; atomic_add calls alone: "
                 f"{_rate(a_rate)}, {a_rate / lock['rate'] if lock and 'rate' in lock else 0:.0f}x lock)")
    return [["scatter_histogram (10M updates, 1000 bins, 2 procs, warm)",
             _cell(m["parallel"], "rate", _rate) + _exact(m["parallel"]) + extra,
             "bincount+sum: " + _cell(m["joblib"], "rate", _rate),
             "np.add.at 1 proc: " + _cell(m["np_add_at"], "rate", _rate)
             + "; lock: " + _cell(lock, "rate", _rate),
             _fmt_ratio(_ratio(m["parallel"], m["joblib"])) + " (time)",
             f">= 100x lock rate (got {_fmt_ratio(r)}x)", met]]


def wl_import_time(c):
    scripts = {m: IMPORT_SCRIPT.format(mod=m) for m in ("parallel", "joblib")}
    rows = []
    variants = [("import_time (fresh interpreter, bytecode cached)", "import_time", True)]
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        variants.append(("import_time, PYTHONDONTWRITEBYTECODE=1 as in this env "
                         "(parallel.py recompiled)", "import_time_nocache", False))
    if not USE_PYCACHE:
        variants = [("import_time (fresh interpreter, environment as is)", "import_time",
                     False)]
    for label, key, cache in variants:
        m = c.measure(key, "import_time", ["parallel", "joblib"], {}, 60,
                      repeats=max(5, 2 * c.repeats + 1), scripts=scripts, pycache=cache)
        r = _ratio(m["parallel"], m["joblib"])
        rows.append([label, _cell(m["parallel"]), _cell(m["joblib"]), "-", _fmt_ratio(r),
                     "<= 0.1 x joblib", _met(r, "<=", 0.1)])
    return rows


WORKLOADS = {
    "tiny_tasks_processes": wl_tiny_tasks_processes,
    "cpu_tasks": wl_cpu_tasks,
    "cold_first_call": wl_cold_first_call,
    "generator_first_result": wl_generator_first_result,
    "large_results": wl_large_results,
    "large_input": wl_large_input,
    "threads_tiny": wl_threads_tiny,
    "shared_counter": wl_shared_counter,
    "scatter_histogram": wl_scatter_histogram,
    "import_time": wl_import_time,
}


def _version(mod):
    code = f"import {mod}; print({mod}.__version__)"
    try:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=60, cwd=HERE).stdout.strip() or "?"
    except Exception:
        return "?"


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Benchmark parallel vs joblib 1.6 vs sequential / multiprocessing. "
                    "Full run (7 repeats): about 2 minutes on a 2-core machine "
                    "(~20 s per repeat); --quick (3 repeats): about 1 minute.")
    ap.add_argument("--quick", action="store_true", help="3 repeats per measurement")
    ap.add_argument("--repeats", type=int, help="override the number of repeats")
    ap.add_argument("--only", help="comma-separated workload names (see --list)")
    ap.add_argument("--list", action="store_true", help="list the workloads and exit")
    ap.add_argument("--json", metavar="PATH", help="also write the raw numbers there")
    ap.add_argument("--no-bytecode-cache", action="store_true",
                    help="run children with the environment as is (by default "
                         "PYTHONDONTWRITEBYTECODE is dropped and a private "
                         "PYTHONPYCACHEPREFIX is used)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every sample")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(WORKLOADS))
        return 0
    names = list(WORKLOADS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        bad = [n for n in names if n not in WORKLOADS]
        if bad:
            ap.error(f"unknown workload(s) {bad}; choose from {list(WORKLOADS)}")
        if "shared_counter" in names and "scatter_histogram" in names:
            names.remove("shared_counter")
            names.insert(names.index("scatter_histogram"), "shared_counter")
    repeats = args.repeats or (3 if args.quick else 7)
    have_joblib = importlib.util.find_spec("joblib") is not None
    jver = _version("joblib") if have_joblib else "not installed"
    pver = _version("parallel")
    global USE_PYCACHE
    USE_PYCACHE = not args.no_bytecode_cache
    c = Ctx(repeats, args.quick, have_joblib, args.verbose)
    if USE_PYCACHE:
        prime_bytecode_cache(have_joblib)
    load_start = os.getloadavg()
    if load_start[0] > 0.5:
        print(f"warning: load average {load_start[0]:.2f} before the run; other processes "
              "on this machine will distort the numbers", file=sys.stderr)
    start = time.perf_counter()
    rows = []
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        try:
            rows.extend(WORKLOADS[name](c))
        except Exception as e:  # keep going: report the crash in the table
            rows.append([name, f"ERROR: {type(e).__name__}: {e}"[:200], "", "", "", "", ""])
        print(f"  {name}: {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - start
    load_end = os.getloadavg()
    header = (f"Machine: {os.cpu_count()} CPUs ({platform.machine()}), Python "
              f"{platform.python_version()} ({sys.executable}), "
              f"{datetime.datetime.now().isoformat(timespec='seconds')}; "
              f"parallel {pver}, joblib {jver}; n_jobs={N_JOBS}; "
              f"medians of {repeats} fresh-interpreter runs, alternating order; "
              f"bytecode cache {'on (' + PYCACHE + ')' if USE_PYCACHE else 'as in env'}; "
              f"total {elapsed:.0f} s; 1-min load average {load_start[0]:.2f} at start, "
              f"{load_end[0]:.2f} at end")
    print()
    print(header)
    print()
    cols = ["workload", "parallel", "joblib", "sequential/other", "ratio vs joblib",
            "target", "met?"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    for row in rows:
        print("| " + " | ".join(str(x) for x in row) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "repeats": repeats, "elapsed_s": elapsed,
                       "rows": rows, "raw": c.raw}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
