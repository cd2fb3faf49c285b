"""Build the C helper of parallel.py: ``_shm.c`` -> extension ``_parallel_shm``.

This is a cffi build script (out-of-line, API mode).  The extension gives
parallel.py shared-memory segments (create, open, map, unmap, unlink) and
lock-free, sequentially consistent atomics (add, max, min, compare-and-swap)
on int32, int64, uint32, uint64, float32 and float64, one element at a time
or as a batch ("scatter") in one call with the GIL released.  The contract of
every function is written once, at the top of ``_shm.c``.

Use it in one of three ways:

- ``python build_shm.py`` builds ``_parallel_shm<EXT_SUFFIX>`` (for example
  ``_parallel_shm.cpython-311-x86_64-linux-gnu.so``) next to this file;
- ``pip install .`` builds it through setuptools, with
  ``setup(cffi_modules=["build_shm.py:ffibuilder"])`` in ``setup.py``; the
  extension is optional there, so a failed compile is a warning and the
  install still succeeds (parallel.py then runs without the atomics); this
  route names the file ``_parallel_shm.abi3.so`` (cffi uses the limited API);
- ``build(target_dir)`` from Python, which parallel.py calls to build the
  helper on first use into a cache folder.

Importing this module compiles nothing.  It needs cffi, and a C compiler to
build.  Not for: anything but parallel.py; the C functions trust their
arguments (dtype, bounds, alignment and writability are checked in Python).
"""

import os
import shutil
import sys
import sysconfig
import tempfile

from cffi import FFI

# ---- knobs ---------------------------------------------------------------

MODULE_NAME = "_parallel_shm"
HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_PATH = os.path.join(HERE, "_shm.c")

if sys.platform == "win32":
    EXTRA_COMPILE_ARGS = ["/O2", "/std:c11"]
else:
    EXTRA_COMPILE_ARGS = ["-O2", "-std=c11"]

# The exported API of _shm.c, and nothing else.
CDEF = """
#define PSHM_ADD ...
#define PSHM_MAX ...
#define PSHM_MIN ...

#define PSHM_INT32 ...
#define PSHM_INT64 ...
#define PSHM_UINT32 ...
#define PSHM_UINT64 ...
#define PSHM_FLOAT32 ...
#define PSHM_FLOAT64 ...

int pshm_create(const char *path, uint64_t size);
int pshm_open(const char *path, int writable);
void *pshm_map(int fd, uint64_t size, int writable);
int pshm_unmap(void *addr, uint64_t size);
int pshm_close(int fd);
int pshm_unlink(const char *path);

int32_t pshm_fetch_add_int32(int32_t *p, int32_t v);
int32_t pshm_fetch_max_int32(int32_t *p, int32_t v);
int32_t pshm_fetch_min_int32(int32_t *p, int32_t v);
int32_t pshm_cas_int32(int32_t *p, int32_t expected, int32_t desired);
int32_t pshm_fetch_add_at_int32(int32_t *base, int64_t i, int32_t v);
int32_t pshm_fetch_max_at_int32(int32_t *base, int64_t i, int32_t v);
int32_t pshm_fetch_min_at_int32(int32_t *base, int64_t i, int32_t v);
int32_t pshm_cas_at_int32(int32_t *base, int64_t i, int32_t expected, int32_t desired);

int64_t pshm_fetch_add_int64(int64_t *p, int64_t v);
int64_t pshm_fetch_max_int64(int64_t *p, int64_t v);
int64_t pshm_fetch_min_int64(int64_t *p, int64_t v);
int64_t pshm_cas_int64(int64_t *p, int64_t expected, int64_t desired);
int64_t pshm_fetch_add_at_int64(int64_t *base, int64_t i, int64_t v);
int64_t pshm_fetch_max_at_int64(int64_t *base, int64_t i, int64_t v);
int64_t pshm_fetch_min_at_int64(int64_t *base, int64_t i, int64_t v);
int64_t pshm_cas_at_int64(int64_t *base, int64_t i, int64_t expected, int64_t desired);

uint32_t pshm_fetch_add_uint32(uint32_t *p, uint32_t v);
uint32_t pshm_fetch_max_uint32(uint32_t *p, uint32_t v);
uint32_t pshm_fetch_min_uint32(uint32_t *p, uint32_t v);
uint32_t pshm_cas_uint32(uint32_t *p, uint32_t expected, uint32_t desired);
uint32_t pshm_fetch_add_at_uint32(uint32_t *base, int64_t i, uint32_t v);
uint32_t pshm_fetch_max_at_uint32(uint32_t *base, int64_t i, uint32_t v);
uint32_t pshm_fetch_min_at_uint32(uint32_t *base, int64_t i, uint32_t v);
uint32_t pshm_cas_at_uint32(uint32_t *base, int64_t i, uint32_t expected, uint32_t desired);

uint64_t pshm_fetch_add_uint64(uint64_t *p, uint64_t v);
uint64_t pshm_fetch_max_uint64(uint64_t *p, uint64_t v);
uint64_t pshm_fetch_min_uint64(uint64_t *p, uint64_t v);
uint64_t pshm_cas_uint64(uint64_t *p, uint64_t expected, uint64_t desired);
uint64_t pshm_fetch_add_at_uint64(uint64_t *base, int64_t i, uint64_t v);
uint64_t pshm_fetch_max_at_uint64(uint64_t *base, int64_t i, uint64_t v);
uint64_t pshm_fetch_min_at_uint64(uint64_t *base, int64_t i, uint64_t v);
uint64_t pshm_cas_at_uint64(uint64_t *base, int64_t i, uint64_t expected, uint64_t desired);

float pshm_fetch_add_float32(float *p, float v);
float pshm_fetch_max_float32(float *p, float v);
float pshm_fetch_min_float32(float *p, float v);
float pshm_cas_float32(float *p, float expected, float desired);
float pshm_fetch_add_at_float32(float *base, int64_t i, float v);
float pshm_fetch_max_at_float32(float *base, int64_t i, float v);
float pshm_fetch_min_at_float32(float *base, int64_t i, float v);
float pshm_cas_at_float32(float *base, int64_t i, float expected, float desired);

double pshm_fetch_add_float64(double *p, double v);
double pshm_fetch_max_float64(double *p, double v);
double pshm_fetch_min_float64(double *p, double v);
double pshm_cas_float64(double *p, double expected, double desired);
double pshm_fetch_add_at_float64(double *base, int64_t i, double v);
double pshm_fetch_max_at_float64(double *base, int64_t i, double v);
double pshm_fetch_min_at_float64(double *base, int64_t i, double v);
double pshm_cas_at_float64(double *base, int64_t i, double expected, double desired);

int pshm_scatter(int op, int dtype, void *base, const int64_t *index,
                 const void *values, void *previous, uint64_t n);
int pshm_scatter_scalar(int op, int dtype, void *base, const int64_t *index,
                        const void *value, void *previous, uint64_t n);
int pshm_scatter_cas(int dtype, void *base, const int64_t *index,
                     const void *expected, const void *desired, void *found,
                     uint64_t n);
int pshm_lock_free(void);
"""


# ---- helpers -------------------------------------------------------------

def read_source():
    """Return the text of ``_shm.c`` from the folder of this file."""
    with open(SOURCE_PATH, encoding="utf-8") as f:
        return f.read()


def extension_filename():
    """Return the file name of the built extension for this interpreter."""
    return MODULE_NAME + sysconfig.get_config_var("EXT_SUFFIX")


def make_builder(optional):
    """Return a configured ``FFI`` builder for ``_parallel_shm``.

    optional : bool
        Passed to setuptools' ``Extension``: True turns a failed compile into
        a warning.  Only setuptools should get True; a direct
        ``FFI.compile()`` would then report success without a built file.
    """
    builder = FFI()
    builder.cdef(CDEF)
    builder.set_source(MODULE_NAME, read_source(),
                       extra_compile_args=EXTRA_COMPILE_ARGS, optional=optional)
    return builder


# ---- the builder setuptools uses (cffi_modules="build_shm.py:ffibuilder") --

ffibuilder = make_builder(optional=True)


# ---- building without setuptools -----------------------------------------

def _has_setuptools():
    try:
        import setuptools  # noqa: F401  (cffi's compile() needs it on 3.12+)
    except ImportError:
        return False
    return True


def compile_with_cc(work, target):
    """Compile the extension with the C compiler this Python was built
    with, where setuptools is missing (fresh virtual environments on
    Python 3.12 and later have none, and cffi's ``compile()`` needs it
    there): cffi writes the C file, the compiler named by sysconfig's
    ``CC``/``LDSHARED`` builds it.  Returns `target`.

    Raises
    ------
    cffi.VerificationError
        The compiler is missing or failed (its output is in the message).
    """
    import contextlib
    import io
    import shlex
    import subprocess
    from cffi import VerificationError
    source = os.path.join(work, MODULE_NAME + ".c")
    with contextlib.redirect_stdout(io.StringIO()):   # cffi's "generating"
        make_builder(optional=False).emit_c_code(source)
    # The compiler and flags as setuptools picks them: CC, LDSHARED,
    # CFLAGS and LDFLAGS from the environment win over sysconfig's.
    config = sysconfig.get_config_var
    env = os.environ
    cc = config("CC") or "cc"
    link = env.get("LDSHARED") or config("LDSHARED") or cc + " -shared"
    if "CC" in env and "LDSHARED" not in env and link.startswith(cc):
        link = env["CC"] + link[len(cc):]
    command = (shlex.split(link) + shlex.split(config("CCSHARED") or "-fPIC")
               + EXTRA_COMPILE_ARGS + shlex.split(env.get("CFLAGS", ""))
               + ["-I" + sysconfig.get_paths()["include"], source,
                  "-o", target] + shlex.split(env.get("LDFLAGS", "")))
    try:
        done = subprocess.run(command, capture_output=True, text=True)
    except OSError as e:
        raise VerificationError("cannot run the C compiler %r: %s"
                                % (command[0], e)) from e
    if done.returncode != 0 or not os.path.exists(target):
        raise VerificationError("the C compiler failed (%s):\n%s"
                                % (" ".join(command), done.stderr))
    return target


def build(target_dir, tmpdir=None):
    """Compile ``_parallel_shm`` into `target_dir` and return the file's path.

    Parameters
    ----------
    target_dir : str
        Folder that receives ``_parallel_shm<EXT_SUFFIX>``; created if absent.
        The file appears there atomically (``os.replace``), so processes that
        build at the same time never load a half-written extension.
    tmpdir : str or None, default None
        Folder for the generated C file and object files.  None uses a fresh
        temporary folder inside `target_dir` and removes it afterwards.

    Returns
    -------
    str
        Absolute path of the built extension.

    Raises
    ------
    cffi.VerificationError
        The C compiler or the linker failed (or none is installed).
    OSError
        `target_dir` or `tmpdir` cannot be created or written.

    Notes
    -----
    cffi changes the process's working directory while it compiles: call this
    before starting threads that depend on it.
    """
    target_dir = os.path.abspath(target_dir)
    os.makedirs(target_dir, exist_ok=True)
    work = tmpdir or tempfile.mkdtemp(prefix=".build-", dir=target_dir)
    try:
        target = os.path.join(os.path.abspath(work), extension_filename())
        if _has_setuptools() or sys.platform == "win32":
            built = make_builder(optional=False).compile(tmpdir=work,
                                                         target=target)
        else:
            built = compile_with_cc(work, target)
        final = os.path.join(target_dir, extension_filename())
        fd, staged = tempfile.mkstemp(prefix=".staged-", dir=target_dir)
        os.close(fd)
        try:
            shutil.copy2(built, staged)
            os.replace(staged, final)
        except BaseException:
            os.unlink(staged)
            raise
        return final
    finally:
        if tmpdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    # build() rather than ffibuilder.compile(tmpdir=HERE): it fails loudly
    # (optional=True would turn a failed compile into a warning), keeps the
    # generated C and object files out of this folder, and compiles where
    # setuptools cannot pick up the project's setup.cfg or pyproject.toml.
    # An optional argument names the target folder (parallel.py uses it to
    # build into its cache folder in a child process: cffi changes the
    # working directory while it compiles).
    print(build(sys.argv[1] if len(sys.argv) > 1 else HERE))
