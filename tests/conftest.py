"""Shared fixtures: leak checks on temp folders and os.environ, script runner."""

import os
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEAK_GRACE_S = 2.0
TEMP_DIRS = tuple(dict.fromkeys(d for d in ("/dev/shm", tempfile.gettempdir())
                                if os.path.isdir(d)))


def _foreign(name):
    """True for an entry made by a live process outside this test session
    (its name carries the creator's pid: parallel_<pid>_... for call
    folders, parallel_<kind>_<pid>_... for segments)."""
    for part in name.split("_")[1:3]:
        if part.isdigit():
            pid = int(part)
            if pid == os.getpid():
                return False
            try:
                with open("/proc/%d/stat" % pid) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                return False          # dead: a leak if it is new
            return ppid != os.getpid()
    return False


def parallel_paths(dirs=TEMP_DIRS):
    """Every ``parallel_*`` entry in the temp folders (full paths), except
    those of live processes that this session did not start."""
    found = set()
    for d in dirs:
        try:
            names = os.listdir(d)
        except OSError:
            continue
        found.update(os.path.join(d, n) for n in names
                     if n.startswith("parallel_") and not _foreign(n))
    return found


def wait_no_new_paths(before, grace_s=LEAK_GRACE_S, dirs=TEMP_DIRS):
    """New parallel_* paths still present after a grace period (polled)."""
    deadline = time.monotonic() + grace_s
    while True:
        new = parallel_paths(dirs) - before
        if not new or time.monotonic() > deadline:
            return new
        time.sleep(0.05)


def _env_snapshot():
    env = dict(os.environ)
    env.pop("PYTEST_CURRENT_TEST", None)   # pytest's own bookkeeping
    return env


@pytest.fixture(autouse=True)
def _no_leaks():
    """After each test: no new parallel_* files, os.environ unchanged."""
    env_before = _env_snapshot()
    before = parallel_paths()
    yield
    env_after = _env_snapshot()
    if env_after != env_before:
        for k in set(env_after) - set(env_before):
            del os.environ[k]
        os.environ.update(env_before)
        changed = sorted(k for k in set(env_before) | set(env_after)
                         if env_before.get(k) != env_after.get(k))
        pytest.fail("the test changed os.environ: %s" % changed)
    leaked = wait_no_new_paths(before)
    if leaked:
        pytest.fail("parallel_* paths left behind: %s" % sorted(leaked))


def script_env(env=None, pythonpath=ROOT):
    full = dict(os.environ)
    if env:
        full.update(env)
    parts = [pythonpath] if pythonpath else []
    if full.get("PYTHONPATH") and pythonpath == ROOT:
        parts.append(full["PYTHONPATH"])
    full["PYTHONPATH"] = os.pathsep.join(parts)
    for k, v in list(full.items()):
        if v is None:
            del full[k]
    return full


def run_script(code, env=None, timeout=60, **kwargs):
    """Run ``sys.executable -c code`` in /work/main (importable)."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                          env=script_env(env), capture_output=True, text=True,
                          timeout=timeout, **kwargs)


@pytest.fixture
def script():
    return run_script

