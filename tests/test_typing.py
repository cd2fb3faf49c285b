"""Type checkers see delayed's signature and Parallel's result types."""
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

USAGE = '''
from math import sqrt
from parallel import Parallel, delayed

def label(x: int, suffix: str = "!") -> str:
    return str(x) + suffix

reveal_type(Parallel(n_jobs=2)(delayed(sqrt)(i) for i in range(4)))
reveal_type(Parallel(n_jobs=2, return_as="generator")(
    delayed(label)(i) for i in range(3)))
reveal_type(Parallel(return_as="generator_unordered")(
    delayed(label)(i) for i in range(3)))
with Parallel(n_jobs=2) as p:
    reveal_type(p(delayed(label)(i, suffix="?") for i in range(3)))
first: float = Parallel()(delayed(sqrt)(i) for i in range(2))[0]
delayed(label)("not an int")
'''


def test_result_types_for_mypy(tmp_path):
    pytest.importorskip("mypy")
    path = tmp_path / "use_parallel.py"
    path.write_text(USAGE)
    env = dict(os.environ, MYPYPATH=ROOT)
    done = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental",
                           "--cache-dir", str(tmp_path / "cache"), str(path)],
                          cwd=str(tmp_path), env=env, capture_output=True,
                          text=True, timeout=240)
    revealed = [t.replace("builtins.", "") for t in
                re.findall(r'Revealed type is "(.*)"', done.stdout)]
    assert revealed == ["list[float]", "typing.Iterator[str]",
                        "typing.Iterator[str]", "list[str]"], done.stdout
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    # the only error: the argument of the wrong type given to delayed(label)
    assert len(errors) == 1 and "use_parallel.py:16" in errors[0] and \
        "arg-type" in errors[0], done.stdout
