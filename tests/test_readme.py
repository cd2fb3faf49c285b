"""Every ```python block of README.md runs, each in a fresh interpreter."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, "README.md")) as f:
    BLOCKS = re.findall(r"```python\n(.*?)```", f.read(), re.S)


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index):
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-c", BLOCKS[index]], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_demo_command_on_a_small_folder(tmp_path):
    """`python -m parallel demo PATH` on a folder with a good and a bad file."""
    (tmp_path / "good.py").write_text("x = 1\n" * 50 + "def f(a):\n    return a\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "also.py").write_text("print('hello world')\n")
    (tmp_path / "bad.py").write_bytes(b"# -*- coding: nope -*-\nx = 1\n")
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-m", "parallel", "demo",
                           str(tmp_path), "--n-jobs", "2", "--no-progress"],
                          cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "files: 2 " in out and "failed: 1" in out, out
    assert "histograms are identical" in out, out
    assert "could not tokenize" in out and "bad.py" in out, out


def test_info_command():
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-m", "parallel", "info"],
                          cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    for word in ("cpu_count()", "start method", "temp folder", "C helper",
                 "backends"):
        assert word in done.stdout, done.stdout


def test_demo_bad_arguments_are_reported_without_traceback():
    env = dict(os.environ, PYTHONPATH=ROOT)
    for args in (["--n-jobs", "0"], ["--backend", "nope"], ["--limit", "-1"]):
        done = subprocess.run([sys.executable, "-m", "parallel", "demo",
                               ROOT, "--no-progress"] + args, cwd=ROOT,
                              env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 2, (args, done.stderr)
        assert "Traceback" not in done.stderr and "error" in done.stderr


BASH_BLOCKS = re.findall(r"```bash\n(.*?)```", open(
    os.path.join(ROOT, "README.md")).read(), re.S)


def test_readme_commands_are_the_ones_ci_and_users_run():
    """The two set-up commands: the test command is the one .ci/run runs,
    and the main command's demo runs on the standard library with identical
    histograms (the install part is what CI itself does)."""
    commands = [line.strip() for block in BASH_BLOCKS
                for line in block.splitlines()
                if line.strip() and not line.strip().startswith("#")]
    main, tests = commands[0], commands[1]
    assert main == ("python -m pip install -e '.[test]' && "
                    "python -m parallel demo")
    assert tests == "python -m pytest"
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read()
    assert "-m pip install -q -e '.[test]'" in ci and "-m pytest -q" in ci
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-m", "parallel", "demo",
                           "--no-progress"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "histograms are identical" in done.stdout
    # the speed-up is reported (its size is the benchmark's business)
    assert re.search(r"speed-up: [0-9.]+x", done.stdout), done.stdout
