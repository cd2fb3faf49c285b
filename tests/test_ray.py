"""The Ray backend on a real local Ray cluster (ray.init on 127.0.0.1)."""
import os
import signal
import subprocess
import sys
import time

import pytest

# CI sets PARALLEL_TEST_REQUIRE_EXTRAS=1: a missing Ray fails there instead
# of skipping these tests.
if os.environ.get("PARALLEL_TEST_REQUIRE_EXTRAS"):
    import ray
else:
    ray = pytest.importorskip("ray")

import numpy as np  # noqa: E402

from cluster_tasks import bump_and_sum, read_and_try_to_write  # noqa: E402
from parallel import (Parallel, ParallelTimeoutError,  # noqa: E402
                      TerminatedWorkerError, WorkerError, atomic_add,
                      delayed,
                      effective_n_jobs, parallel_config, shared_zeros)

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def cluster():
    env = dict(os.environ)
    # Ray workers import this test module: put its folder on their path.
    here = os.path.dirname(os.path.abspath(__file__))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1",
             runtime_env={"env_vars": {"PYTHONPATH": here}})
    # Leave os.environ as it was (the leak check compares it per test).
    os.environ.clear()
    os.environ.update(env)
    yield
    ray.shutdown()
    os.environ.clear()
    os.environ.update(env)


def square(x):
    return x * x


def whoami(_):
    return os.getpid()


def fail_with_cause(i):
    try:
        {}["missing"]
    except KeyError as e:
        raise ValueError("task %d failed" % i) from e


def die_on_one(i):
    if i == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return i


def sleep_return(seconds, i):
    time.sleep(seconds)
    return i


def add_ones(counts, n):
    for _ in range(n):
        atomic_add(counts, 0, 1)


def nested(i):
    return sum(Parallel(n_jobs=2)(delayed(square)(j) for j in range(i)))


def test_ray_backend_runs_on_ray_workers(cluster):
    with parallel_config(backend="ray"):
        assert Parallel()(delayed(square)(i) for i in range(20)) == \
            [i * i for i in range(20)]
        pids = set(Parallel()(delayed(whoami)(i) for i in range(8)))
    assert os.getpid() not in pids
    assert pids


def test_ray_lambdas_and_closures(cluster):
    offset = 10
    assert Parallel(backend="ray", n_jobs=2)(
        delayed(lambda x: x + offset)(i) for i in range(5)) == \
        [10, 11, 12, 13, 14]


def test_ray_n_jobs_counts_cluster_cpus(cluster):
    with parallel_config(backend="ray"):
        assert effective_n_jobs(-1) == 2
        assert effective_n_jobs(-2) == 1
        assert effective_n_jobs(5) == 5
        assert Parallel().n_jobs is None or Parallel().n_jobs in (-1, 2)


def test_ray_worker_exception_keeps_type_cause_and_traceback(cluster):
    with pytest.raises(ValueError, match="task 3 failed") as info:
        Parallel(backend="ray", n_jobs=2)(
            delayed(fail_with_cause)(i) for i in [3])
    assert isinstance(info.value.__cause__, KeyError)
    assert "fail_with_cause" in info.value.remote_traceback
    # The next call works.
    assert Parallel(backend="ray", n_jobs=2)(
        delayed(square)(i) for i in range(3)) == [0, 1, 4]


def test_ray_killed_worker_raises_terminated_worker_error(cluster):
    t0 = time.monotonic()
    with pytest.raises(TerminatedWorkerError, match="Ray worker"):
        Parallel(backend="ray", n_jobs=2, batch_size=1)(
            delayed(die_on_one)(i) for i in range(4))
    assert time.monotonic() - t0 < 30
    assert Parallel(backend="ray", n_jobs=2)(
        delayed(square)(i) for i in range(3)) == [0, 1, 4]


def test_ray_timeout_cancels_running_tasks(cluster):
    t0 = time.monotonic()
    with pytest.raises(ParallelTimeoutError):
        Parallel(backend="ray", n_jobs=2, timeout=1)(
            delayed(sleep_return)(60, i) for i in range(2))
    assert time.monotonic() - t0 < 10
    # The forced cancellation freed the CPUs: a new call runs at once.
    t1 = time.monotonic()
    assert Parallel(backend="ray", n_jobs=2)(
        delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]
    assert time.monotonic() - t1 < 20


@pytest.mark.parametrize("mode", ["generator", "generator_unordered"])
def test_ray_generators(cluster, mode):
    out = Parallel(backend="ray", n_jobs=2, return_as=mode)(
        delayed(square)(i) for i in range(10))
    assert not isinstance(out, list)
    results = list(out)
    if mode == "generator":
        assert results == [i * i for i in range(10)]
    else:
        assert sorted(results) == [i * i for i in range(10)]


def test_ray_tasks_update_a_shared_array_atomically(cluster):
    counts = shared_zeros(1, np.int64)
    Parallel(backend="ray", n_jobs=2, batch_size=1)(
        delayed(add_ones)(counts, 20000) for _ in range(4))
    assert counts[0] == 80000


def test_ray_nested_calls_run_sequentially(cluster):
    with parallel_config(backend="ray"):
        assert Parallel(n_jobs=2)(delayed(nested)(i) for i in range(4)) == \
            [0, 0, 1, 5]


def test_ray_remote_args_reach_the_tasks(cluster):
    # Each task asks for both CPUs: they run one at a time.
    with parallel_config(backend="ray", ray_remote_args={"num_cpus": 2}):
        assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(3)) == \
            [0, 1, 4]
    with pytest.raises(ValueError, match="ray_remote_args"):
        Parallel(backend=("ray", {"ray_remote_args": 2}))


def test_ray_task_that_cannot_be_unpickled_names_the_cause(cluster,
                                                             tmp_path):
    # A function of a module that the Ray workers cannot import.
    (tmp_path / "only_here.py").write_text("def f(x):\n    return x\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import only_here
        with pytest.raises(WorkerError, match="could not be unpickled in "
                           "the worker.*only_here.*importable"):
            Parallel(backend="ray", n_jobs=2)(
                delayed(only_here.f)(i) for i in range(2))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("only_here", None)


def inner_ray_call(i):
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        total = sum(Parallel(backend="ray", n_jobs=2)(
            delayed(square)(j) for j in range(i)))
    return total, [str(w.message) for w in caught]


def write_into(a, i):
    a[i] = i + 1


def make_shared(n):
    a = shared_zeros(n)
    a[:] = 7
    return a


def center(x):
    x -= x.mean()      # the task's copy of the input is writable
    return x


def test_ray_timeout_counts_from_the_start_of_each_task(cluster):
    # 6 tasks of 0.5 s on 2 CPUs with n_jobs=3: some wait in Ray's queue,
    # none runs longer than the timeout.
    assert Parallel(backend="ray", n_jobs=3, timeout=2.5)(
        delayed(sleep_return)(0.5, i) for i in range(6)) == list(range(6))
    # A batch of 4 tasks of 0.3 s is not a task of 1.2 s.
    assert Parallel(backend="ray", n_jobs=2, batch_size=4, timeout=1)(
        delayed(sleep_return)(0.3, i) for i in range(8)) == list(range(8))


def test_ray_call_nested_in_a_ray_task_runs_sequentially(cluster):
    # Its outer task would hold the CPU that its inner tasks wait for.
    out = Parallel(backend="ray", n_jobs=2, timeout=60)(
        delayed(inner_ray_call)(i) for i in range(4))
    assert [total for total, _ in out] == [0, 0, 1, 5]
    for _, caught in out:
        assert len(caught) == 1 and "cannot be nested in a Ray task" in \
            caught[0]


def test_ray_arrays_travel_as_with_process_backends(cluster, tmp_path):
    mm = np.memmap(str(tmp_path / "out.dat"), dtype=np.float64, mode="w+",
                   shape=(6,))
    Parallel(backend="ray", n_jobs=2)(delayed(write_into)(mm, i)
                                      for i in range(6))
    assert mm.tolist() == [1, 2, 3, 4, 5, 6]      # writes reach the caller
    del mm
    made = Parallel(backend="ray", n_jobs=2)(delayed(make_shared)(10)
                                             for _ in range(3))
    for a in made:
        assert type(a) is np.ndarray and a.tolist() == [7.0] * 10
    x = np.arange(6.0)
    [out] = Parallel(backend="ray", n_jobs=2)(delayed(center)(x)
                                              for _ in range(1))
    assert out.tolist() == (x - x.mean()).tolist() and out.flags.writeable


def test_ray_large_arguments_go_to_the_object_store_once(cluster):
    big = np.arange(300_000, dtype=np.float64)     # 2.4 MB > max_nbytes
    puts = []
    real_put = ray.put

    def counting_put(value, *args, **kwargs):
        puts.append(type(value).__name__)
        return real_put(value, *args, **kwargs)
    ray.put = counting_put
    try:
        out = Parallel(backend="ray", n_jobs=2, batch_size=1)(
            delayed(read_and_try_to_write)(big, i) for i in range(10))
        small = np.zeros(1000)
        sums = Parallel(backend="ray", n_jobs=2, batch_size=1)(
            delayed(bump_and_sum)(small, i) for i in range(6))
    finally:
        ray.put = real_put
    # once each: the large array itself (read-only in the tasks, as an
    # auto-memmapped input), the small one pickled (a copy per batch)
    assert puts == ["ndarray", "bytes"]
    assert out == [(float(i), False, False) for i in range(10)]
    assert sums == [1000.0] * 6 and not small.any() and big[0] == 0.0


def test_ray_unpicklable_arguments_and_results_are_named(cluster):
    import pickle
    import threading
    with pytest.raises(pickle.PicklingError, match="calling square"):
        Parallel(backend="ray", n_jobs=2)(
            delayed(square)(threading.Lock()) for _ in range(2))
    with pytest.raises(WorkerError, match="the result of task 0 .* could "
                       "not be pickled"):
        Parallel(backend="ray", n_jobs=2)(
            delayed(threading.Lock)() for _ in range(1))


def test_ray_remote_args_checks(cluster):
    with pytest.raises(ValueError, match="num_returns"):
        Parallel(backend=("ray", {"ray_remote_args": {"num_returns": 2}}))
    # max_retries may be given (it replaces the default of 0)
    with parallel_config(backend="ray", ray_remote_args={"max_retries": 2}):
        assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(3)) == \
            [0, 1, 4]
    # More CPUs per task than the cluster has: said at once, not a hang.
    with pytest.warns(UserWarning, match="ask for .*CPU"):
        with pytest.raises(ParallelTimeoutError):
            Parallel(backend=("ray", {"ray_remote_args": {"num_cpus": 4}}),
                     n_jobs=2, timeout=1)(
                delayed(square)(i) for i in range(2))


def hold_shared_and_sleep(i):
    a = shared_zeros(1000)
    time.sleep(60)
    return float(a.sum())


def test_ray_segments_of_a_killed_task_are_removed(cluster):
    # Ray kills the child processes of the workers it kills: the tracker
    # of the worker's segments must not be one of them.
    before = set(os.listdir("/dev/shm"))
    with pytest.raises(ParallelTimeoutError):
        Parallel(backend="ray", n_jobs=2, timeout=2)(
            delayed(hold_shared_and_sleep)(i) for i in range(2))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = [n for n in set(os.listdir("/dev/shm")) - before
                if n.startswith("parallel_shared_")
                and not os.path.exists("/proc/%s" % n.split("_")[2])]
        if not left:
            break
        time.sleep(0.2)
    assert not left


def test_ray_missing_gives_a_clear_error():
    code = ("import sys; sys.modules['ray'] = None\n"
            "from parallel import Parallel, delayed\n"
            "try:\n"
            "    Parallel(backend='ray')(delayed(abs)(1) for _ in range(2))\n"
            "except ValueError as e:\n"
            "    print('ERROR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=60)
    assert "ERROR backend 'ray' needs Ray; install it with `pip install " \
        "ray`" in out.stdout, out.stdout + out.stderr
