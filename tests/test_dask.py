"""The dask backend on a real LocalCluster on 127.0.0.1 (public report B25)."""
import os
import signal

import pytest

# CI sets PARALLEL_TEST_REQUIRE_EXTRAS=1: a missing dask fails there instead
# of skipping these tests.
if os.environ.get("PARALLEL_TEST_REQUIRE_EXTRAS"):
    import distributed
else:
    distributed = pytest.importorskip("distributed")

from cluster_tasks import bump_and_sum, read_and_try_to_write  # noqa: E402
from parallel import (Parallel, TerminatedWorkerError, delayed,  # noqa: E402
                      parallel_config)


@pytest.fixture(scope="module")
def client():
    env = dict(os.environ)
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True,
        dashboard_address=None, host="127.0.0.1")
    # LocalCluster sets thread-limit variables in this process: undo it.
    os.environ.clear()
    os.environ.update(env)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()
    os.environ.clear()
    os.environ.update(env)


def square(x):
    return x * x


def die_on_one(i):
    if i == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return i


def whoami(_):
    return os.getpid()


def test_dask_backend_runs_on_the_cluster(client):
    with parallel_config(backend="dask"):
        assert Parallel()(delayed(square)(i) for i in range(20)) == \
            [i * i for i in range(20)]
        pids = set(Parallel()(delayed(whoami)(i) for i in range(8)))
    assert os.getpid() not in pids
    worker_pids = set(client.run(os.getpid).values())
    assert pids <= worker_pids


def test_dask_backend_without_prior_registration(client):
    assert Parallel(backend="dask", n_jobs=2)(
        delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]


@pytest.mark.parametrize("mode", ["generator", "generator_unordered"])
def test_dask_generators(client, mode):
    out = Parallel(backend="dask", return_as=mode)(
        delayed(square)(i) for i in range(6))
    assert sorted(out) == [0, 1, 4, 9, 16, 25]


def test_dask_worker_death_fails_the_call_b25(client):
    env = dict(os.environ)
    with parallel_config(backend="dask"):
        with pytest.raises(TerminatedWorkerError) as info:
            Parallel()(delayed(die_on_one)(i) for i in range(4))
    assert "KilledWorker" in repr(info.value.__cause__)
    # the client and cluster stay usable
    client.wait_for_workers(2, timeout=60)
    # the nanny that restarts the dead worker sets variables in this process
    os.environ.clear()
    os.environ.update(env)
    with parallel_config(backend="dask"):
        assert Parallel()(delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]


def test_dask_task_exception_keeps_its_type(client):
    with pytest.raises(ZeroDivisionError):
        Parallel(backend="dask")(delayed(divmod)(1, i) for i in range(3))


def inner_dask_call(i):
    return sum(Parallel(backend="dask", n_jobs=2)(
        delayed(square)(j) for j in range(i)))


def write_into(a, i):
    a[i] = i + 1


def sleep_return(seconds, i):
    import time
    time.sleep(seconds)
    return i


@pytest.mark.timeout(120)
def test_dask_call_nested_in_a_dask_task_does_not_deadlock(client):
    # The outer tasks hold both worker threads: they leave them while they
    # wait for their inner tasks (as joblib's retrieval_context).
    assert Parallel(backend="dask", n_jobs=2, timeout=60)(
        delayed(inner_dask_call)(i) for i in range(4)) == [0, 0, 1, 5]


def test_dask_memmap_writes_reach_the_caller(client, tmp_path):
    import numpy as np
    mm = np.memmap(str(tmp_path / "out.dat"), dtype=np.float64, mode="w+",
                   shape=(6,))
    Parallel(backend="dask", n_jobs=2)(delayed(write_into)(mm, i)
                                       for i in range(6))
    assert mm.tolist() == [1, 2, 3, 4, 5, 6]
    del mm


def test_dask_timeout_does_not_count_queued_tasks(client):
    # n_jobs=3 on 2 worker threads: a task waits, none runs 2 s.
    assert Parallel(backend="dask", n_jobs=3, timeout=2)(
        delayed(sleep_return)(0.6, i) for i in range(6)) == list(range(6))


def backend_name_inside(_):
    return type(Parallel()._backend).__name__


def test_calls_inside_dask_tasks_run_on_the_cluster_as_joblib(client):
    # The nested backend is dask again (joblib's), not a sequential loop.
    with parallel_config(backend="dask"):
        names = Parallel(n_jobs=2)(delayed(backend_name_inside)(i)
                                   for i in range(2))
    assert names == ["DaskDistributedBackend"] * 2


def worker_address(_):
    return distributed.get_worker().address


def test_dask_submit_keywords_reach_client_submit(client):
    first = sorted(client.scheduler_info()["workers"])[0]
    with parallel_config(backend="dask", workers=[first]):
        addresses = set(Parallel()(delayed(worker_address)(i)
                                   for i in range(12)))
    assert addresses == {first}
    with pytest.raises(ValueError, match="key"):
        parallel_config(backend="dask", key="mine")


def test_dask_scatter_must_be_a_list():
    with pytest.raises(TypeError, match="scatter must be a list/tuple"):
        parallel_config(backend="dask", scatter=1)


@pytest.mark.timeout(120)
def test_dask_cluster_without_workers_fails_instead_of_hanging():
    with distributed.LocalCluster(n_workers=0, processes=False,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster):
        with parallel_config(backend="dask", wait_for_workers_timeout=0.5):
            with pytest.raises(TimeoutError, match="no worker after 0.5"):
                Parallel()(delayed(square)(i) for i in range(4))
        with parallel_config(backend="dask", wait_for_workers_timeout=0):
            with pytest.raises(RuntimeError, match="no active worker"):
                Parallel()(delayed(square)(i) for i in range(4))


def scatter_events(client):
    """How many times dask workers received data from a scatter."""
    def count(dask_worker):     # the whole log: released keys count too
        return sum(1 for event in dask_worker.state.log
                   if event[1] == "receive-from-scatter")
    return sum(client.run(count).values())


def test_large_arguments_cross_to_dask_once_per_call(client):
    import numpy as np
    big = np.arange(300_000, dtype=np.float64)     # 2.4 MB > max_nbytes
    before = scatter_events(client)
    with parallel_config(backend="dask"):
        out = Parallel(batch_size=1)(
            delayed(read_and_try_to_write)(big, i) for i in range(20))
    # one scatter for 20 tasks; read-only, as an auto-memmapped input
    assert scatter_events(client) - before == 1
    assert out == [(float(i), False, False) for i in range(20)]
    assert big[0] == 0.0
    # mmap_mode='c' (or max_nbytes=None): a writable copy per batch
    with parallel_config(backend="dask", mmap_mode="c"):
        out = Parallel(batch_size=1)(
            delayed(read_and_try_to_write)(big, i) for i in range(1, 5))
    assert out == [(float(i), True, True) for i in range(1, 5)]
    # below max_nbytes: scattered once too, unpickled per batch (writable)
    small = np.zeros(1000)
    with parallel_config(backend="dask"):
        assert Parallel(batch_size=1)(
            delayed(bump_and_sum)(small, i) for i in range(6)) == [1000.0] * 6
    assert not small.any()


def test_arguments_seen_once_travel_in_their_batch(client):
    # One array per task: scattering each would cost a round trip per task
    # and keep them all on the cluster until the call ends.
    import numpy as np
    chunks = [np.full(2000, float(i)) for i in range(30)]
    before = scatter_events(client)
    with parallel_config(backend="dask"):
        sums = Parallel(batch_size=1)(delayed(np.sum)(c) for c in chunks)
    assert sums == [2000.0 * i for i in range(30)]
    assert scatter_events(client) == before


def write_first(x):
    x[0] = 1.0


def test_writing_into_a_shared_dask_input_explains_the_knobs(client):
    import numpy as np
    with parallel_config(backend="dask"):
        with pytest.raises(ValueError, match="read-only") as info:
            Parallel()(delayed(write_first)(np.zeros(300_000))
                       for _ in range(2))
    assert "mmap_mode='c'" in str(info.value) + "".join(
        getattr(info.value, "__notes__", []))


def test_dask_memmap_arguments_still_travel_by_reference(client, tmp_path):
    import numpy as np
    mm = np.memmap(str(tmp_path / "big.dat"), dtype=np.float64, mode="w+",
                   shape=(300_000,))
    Parallel(backend="dask", batch_size=1)(delayed(write_into)(mm, i)
                                           for i in range(4))
    assert mm[:4].tolist() == [1, 2, 3, 4]
    del mm
