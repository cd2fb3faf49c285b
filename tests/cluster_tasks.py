"""Task functions shared by the dask and Ray tests (their workers import
this module by name, from the tests folder)."""


def read_and_try_to_write(x, i):
    """x[i], whether writing into x worked, and x's writeable flag."""
    try:
        x[0] = -1.0
        written = True
    except ValueError:
        written = False
    return float(x[i]), written, x.flags.writeable


def bump_and_sum(x, i):
    x += 1            # its own copy: no other task sees it
    return float(x.sum())
