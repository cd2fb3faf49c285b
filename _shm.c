/*
 * _shm.c -- shared-memory segments and lock-free atomics for parallel.py.
 *
 * Compiled by build_shm.py (cffi, API mode) into the extension _parallel_shm.
 * It includes no Python.h: cffi releases the GIL around every call, so
 * nothing here may touch Python objects.
 *
 * Contract
 * --------
 * Atomics.  Every operation is sequentially consistent.  The 4- and 8-byte
 * atomics are lock-free, checked at compile time: a lock-based fallback would
 * be silently wrong between processes, so the build fails instead.
 *   - read-modify-write (fetch_add, fetch_max, fetch_min) returns the
 *     previous value;
 *   - compare-and-swap returns the value found; the swap happened if and only
 *     if found == expected, compared bitwise (so 0.0 and -0.0 differ, and a
 *     NaN matches the same NaN bit pattern);
 *   - integer add wraps modulo 2**n, as numpy does (done in unsigned
 *     arithmetic, so signed overflow is never undefined behaviour);
 *   - float add, max and min are compare-and-swap loops on the bit pattern;
 *   - max stores v if and only if v > current, min if and only if
 *     v < current: a NaN v is never stored and a NaN already in place is
 *     never replaced (numpy's np.maximum would propagate the NaN instead);
 *   - pointers must be aligned to their element size (the caller checks).
 * The *_at_* entry points apply one operation at base + i (one call from
 * Python instead of a pointer addition and a call).
 * The scatter entry points apply one operation per (index[i], values[i])
 * pair, in order (pshm_scatter_scalar: one value, *value, for every
 * index); index holds element offsets from base, not byte offsets.
 * Duplicate indices are allowed and every update lands.
 *
 * Segments.  System calls return 0 (or a file descriptor) on success and -1
 * with errno set on failure; EINTR is retried, except by close(), which
 * releases the descriptor even when interrupted and is never retried
 * (PEP 475); an interrupted close counts as success.  pshm_map returns NULL,
 * not MAP_FAILED, on failure.
 */

#ifndef _POSIX_C_SOURCE
#  define _POSIX_C_SOURCE 200809L     /* O_CLOEXEC, posix_fallocate */
#endif
#ifndef _FILE_OFFSET_BITS
#  define _FILE_OFFSET_BITS 64        /* 64-bit off_t on 32-bit platforms */
#endif

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define PSHM_ADD 0
#define PSHM_MAX 1
#define PSHM_MIN 2

#define PSHM_INT32 0
#define PSHM_INT64 1
#define PSHM_UINT32 2
#define PSHM_UINT64 3
#define PSHM_FLOAT32 4
#define PSHM_FLOAT64 5


/* ======================================================================
 * Compiler ladder: four primitives on 32- and 64-bit unsigned words.
 *   pshm_load{32,64}(p)                  -> current value
 *   pshm_fetch_add{32,64}(p, v)          -> previous value (wraps)
 *   pshm_cas{32,64}(p, expected, desired) -> value found
 * Everything else is built from these.
 * ====================================================================== */

#if defined(__GNUC__) && defined(__ATOMIC_SEQ_CST)   /* GCC, Clang, ICC */

#define PSHM_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
PSHM_STATIC_ASSERT(__atomic_always_lock_free(4, 0) && __atomic_always_lock_free(8, 0),
                   "4- and 8-byte atomics must be lock-free to work across processes");

#define PSHM_DEFINE_PRIMITIVES(W)                                              \
    static inline uint##W##_t pshm_load##W(uint##W##_t *p)                     \
    {                                                                          \
        return __atomic_load_n(p, __ATOMIC_SEQ_CST);                           \
    }                                                                          \
    static inline uint##W##_t pshm_fetch_add##W(uint##W##_t *p, uint##W##_t v) \
    {                                                                          \
        return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);                     \
    }                                                                          \
    static inline uint##W##_t pshm_cas##W(uint##W##_t *p,                      \
                                          uint##W##_t expected,                \
                                          uint##W##_t desired)                 \
    {                                                                          \
        /* on failure the builtin stores the value found into expected */     \
        __atomic_compare_exchange_n(p, &expected, desired, 0,                  \
                                    __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);       \
        return expected;                                                       \
    }

#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L \
      && !defined(__STDC_NO_ATOMICS__)                       /* plain C11 */

#include <stdatomic.h>

#define PSHM_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
PSHM_STATIC_ASSERT(ATOMIC_INT_LOCK_FREE == 2 && ATOMIC_LONG_LOCK_FREE == 2
                   && ATOMIC_LLONG_LOCK_FREE == 2,
                   "4- and 8-byte atomics must be lock-free to work across processes");

#define PSHM_DEFINE_PRIMITIVES(W)                                              \
    static inline uint##W##_t pshm_load##W(uint##W##_t *p)                     \
    {                                                                          \
        return atomic_load((_Atomic uint##W##_t *)p);                          \
    }                                                                          \
    static inline uint##W##_t pshm_fetch_add##W(uint##W##_t *p, uint##W##_t v) \
    {                                                                          \
        return atomic_fetch_add((_Atomic uint##W##_t *)p, v);                  \
    }                                                                          \
    static inline uint##W##_t pshm_cas##W(uint##W##_t *p,                      \
                                          uint##W##_t expected,                \
                                          uint##W##_t desired)                 \
    {                                                                          \
        atomic_compare_exchange_strong((_Atomic uint##W##_t *)p,               \
                                       &expected, desired);                    \
        return expected;                                                       \
    }

#elif defined(_MSC_VER) && (defined(_M_X64) || defined(_M_ARM64))   /* MSVC */

#include <intrin.h>

/* MSVC's C mode may lack _Static_assert: a negative array size fails instead. */
#define PSHM_CONCAT_(a, b) a##b
#define PSHM_CONCAT(a, b) PSHM_CONCAT_(a, b)
#define PSHM_STATIC_ASSERT(cond, msg) \
    typedef char PSHM_CONCAT(pshm_static_assert_, __LINE__)[(cond) ? 1 : -1]

/* Interlocked operations are full barriers and always lock-free on these
 * targets; this checks the word sizes they are used with. */
PSHM_STATIC_ASSERT(sizeof(long) == 4 && sizeof(__int64) == 8,
                   "Interlocked word sizes");

static __forceinline uint32_t pshm_load32(uint32_t *p)
{
    return (uint32_t)_InterlockedOr((volatile long *)p, 0);
}
static __forceinline uint32_t pshm_fetch_add32(uint32_t *p, uint32_t v)
{
    return (uint32_t)_InterlockedExchangeAdd((volatile long *)p, (long)v);
}
static __forceinline uint32_t pshm_cas32(uint32_t *p, uint32_t expected,
                                         uint32_t desired)
{
    return (uint32_t)_InterlockedCompareExchange((volatile long *)p,
                                                 (long)desired, (long)expected);
}
static __forceinline uint64_t pshm_load64(uint64_t *p)
{
    return (uint64_t)_InterlockedOr64((volatile __int64 *)p, 0);
}
static __forceinline uint64_t pshm_fetch_add64(uint64_t *p, uint64_t v)
{
    return (uint64_t)_InterlockedExchangeAdd64((volatile __int64 *)p,
                                               (__int64)v);
}
static __forceinline uint64_t pshm_cas64(uint64_t *p, uint64_t expected,
                                         uint64_t desired)
{
    return (uint64_t)_InterlockedCompareExchange64((volatile __int64 *)p,
                                                   (__int64)desired,
                                                   (__int64)expected);
}

#else
#  error "_shm.c needs GCC/Clang __atomic builtins, C11 <stdatomic.h> or MSVC (x64, ARM64)"
#endif

#ifdef PSHM_DEFINE_PRIMITIVES
PSHM_DEFINE_PRIMITIVES(32)
PSHM_DEFINE_PRIMITIVES(64)
#endif


/* ======================================================================
 * Typed single-element atomics.
 * Each element type T is handled through the unsigned word U of the same
 * width; memcpy converts between the two bit patterns (compilers turn it
 * into a register move).
 * ====================================================================== */

/* Bit-pattern conversions and compare-and-swap: all six types. */
#define PSHM_DEFINE_CAS(T, SUF, W)                                             \
    static inline uint##W##_t pshm_bits_##SUF(T x)                             \
    {                                                                          \
        uint##W##_t u;                                                         \
        memcpy(&u, &x, sizeof u);                                              \
        return u;                                                              \
    }                                                                          \
    static inline T pshm_value_##SUF(uint##W##_t u)                            \
    {                                                                          \
        T x;                                                                   \
        memcpy(&x, &u, sizeof x);                                              \
        return x;                                                              \
    }                                                                          \
    T pshm_cas_##SUF(T *p, T expected, T desired)                              \
    {                                                                          \
        return pshm_value_##SUF(pshm_cas##W((uint##W##_t *)p,                  \
                                            pshm_bits_##SUF(expected),         \
                                            pshm_bits_##SUF(desired)));        \
    }

/* Store v where `v OP current` holds; return the previous value.  With
 * OP = > this is max, with OP = < it is min.  Nothing is written when the
 * comparison fails (a NaN on either side makes it fail). */
#define PSHM_DEFINE_CMP_UPDATE(T, SUF, W, NAME, OP)                            \
    T pshm_fetch_##NAME##_##SUF(T *p, T v)                                     \
    {                                                                          \
        uint##W##_t *word = (uint##W##_t *)p;                                  \
        uint##W##_t seen = pshm_load##W(word);                                 \
        for (;;) {                                                             \
            T current = pshm_value_##SUF(seen);                                \
            if (!(v OP current))                                               \
                return current;                                                \
            uint##W##_t found = pshm_cas##W(word, seen, pshm_bits_##SUF(v));   \
            if (found == seen)                                                 \
                return current;                                                \
            seen = found;                                                      \
        }                                                                      \
    }

/* Integer add: one hardware fetch-and-add on the unsigned word, which wraps
 * modulo 2**W for signed and unsigned types alike. */
#define PSHM_DEFINE_INT_ADD(T, SUF, W)                                         \
    T pshm_fetch_add_##SUF(T *p, T v)                                          \
    {                                                                          \
        return pshm_value_##SUF(pshm_fetch_add##W((uint##W##_t *)p,            \
                                                  pshm_bits_##SUF(v)));        \
    }

/* Float add: compare-and-swap loop on the bit pattern. */
#define PSHM_DEFINE_FLOAT_ADD(T, SUF, W)                                       \
    T pshm_fetch_add_##SUF(T *p, T v)                                          \
    {                                                                          \
        uint##W##_t *word = (uint##W##_t *)p;                                  \
        uint##W##_t seen = pshm_load##W(word);                                 \
        for (;;) {                                                             \
            T current = pshm_value_##SUF(seen);                                \
            uint##W##_t found = pshm_cas##W(word, seen,                        \
                                            pshm_bits_##SUF(current + v));     \
            if (found == seen)                                                 \
                return current;                                                \
            seen = found;                                                      \
        }                                                                      \
    }

/* Batch ("scatter") loops for one type; op and dtype are checked by the
 * dispatchers further down. */
#define PSHM_DEFINE_SCATTER(T, SUF)                                            \
    static void pshm_scatter_##SUF(T (*rmw)(T *, T), T *base,                  \
                                   const int64_t *index, const T *values,      \
                                   uint64_t step, T *previous, uint64_t n)     \
    {                                                                          \
        for (uint64_t i = 0; i < n; i++) {                                     \
            T old = rmw(base + index[i], values[i * step]);                    \
            if (previous != NULL)                                              \
                previous[i] = old;                                             \
        }                                                                      \
    }                                                                          \
    static void pshm_scatter_cas_##SUF(T *base, const int64_t *index,          \
                                       const T *expected, const T *desired,    \
                                       T *found, uint64_t n)                   \
    {                                                                          \
        for (uint64_t i = 0; i < n; i++) {                                     \
            T old = pshm_cas_##SUF(base + index[i], expected[i], desired[i]);  \
            if (found != NULL)                                                 \
                found[i] = old;                                                \
        }                                                                      \
    }

/* Single-element entry points taking (base, index): from Python, one call
 * instead of a pointer addition and a call. */
#define PSHM_DEFINE_AT(T, SUF)                                                 \
    T pshm_fetch_add_at_##SUF(T *base, int64_t i, T v)                         \
    {                                                                          \
        return pshm_fetch_add_##SUF(base + i, v);                              \
    }                                                                          \
    T pshm_fetch_max_at_##SUF(T *base, int64_t i, T v)                         \
    {                                                                          \
        return pshm_fetch_max_##SUF(base + i, v);                              \
    }                                                                          \
    T pshm_fetch_min_at_##SUF(T *base, int64_t i, T v)                         \
    {                                                                          \
        return pshm_fetch_min_##SUF(base + i, v);                              \
    }                                                                          \
    T pshm_cas_at_##SUF(T *base, int64_t i, T expected, T desired)             \
    {                                                                          \
        return pshm_cas_##SUF(base + i, expected, desired);                    \
    }

#define PSHM_DEFINE_INTEGER_TYPE(T, SUF, W)                                    \
    PSHM_DEFINE_CAS(T, SUF, W)                                                 \
    PSHM_DEFINE_CMP_UPDATE(T, SUF, W, max, >)                                  \
    PSHM_DEFINE_CMP_UPDATE(T, SUF, W, min, <)                                  \
    PSHM_DEFINE_INT_ADD(T, SUF, W)                                             \
    PSHM_DEFINE_AT(T, SUF)                                                     \
    PSHM_DEFINE_SCATTER(T, SUF)

#define PSHM_DEFINE_FLOAT_TYPE(T, SUF, W)                                      \
    PSHM_DEFINE_CAS(T, SUF, W)                                                 \
    PSHM_DEFINE_CMP_UPDATE(T, SUF, W, max, >)                                  \
    PSHM_DEFINE_CMP_UPDATE(T, SUF, W, min, <)                                  \
    PSHM_DEFINE_FLOAT_ADD(T, SUF, W)                                           \
    PSHM_DEFINE_AT(T, SUF)                                                     \
    PSHM_DEFINE_SCATTER(T, SUF)

PSHM_STATIC_ASSERT(sizeof(float) == 4 && sizeof(double) == 8,
                   "float32 and float64 must be 4 and 8 bytes");

PSHM_DEFINE_INTEGER_TYPE(int32_t, int32, 32)
PSHM_DEFINE_INTEGER_TYPE(int64_t, int64, 64)
PSHM_DEFINE_INTEGER_TYPE(uint32_t, uint32, 32)
PSHM_DEFINE_INTEGER_TYPE(uint64_t, uint64, 64)
PSHM_DEFINE_FLOAT_TYPE(float, float32, 32)
PSHM_DEFINE_FLOAT_TYPE(double, float64, 64)


/* ======================================================================
 * Batch entry points: one call (one GIL release) for n updates.
 * ====================================================================== */

/* Pick the read-modify-write function for (op, SUF), or fail with EINVAL. */
#define PSHM_SCATTER_CASE(DTYPE, T, SUF)                                       \
    case DTYPE: {                                                              \
        T (*rmw)(T *, T) = op == PSHM_ADD ? pshm_fetch_add_##SUF               \
                         : op == PSHM_MAX ? pshm_fetch_max_##SUF               \
                         : pshm_fetch_min_##SUF;                               \
        pshm_scatter_##SUF(rmw, (T *)base, index, (const T *)values, step,     \
                           (T *)previous, n);                                  \
        return 0;                                                              \
    }

/* values[i * step]: step 1 for one value per index, 0 for one for all. */
static int pshm_scatter_step(int op, int dtype, void *base,
                             const int64_t *index, const void *values,
                             uint64_t step, void *previous, uint64_t n)
{
    if (op != PSHM_ADD && op != PSHM_MAX && op != PSHM_MIN) {
        errno = EINVAL;
        return -1;
    }
    switch (dtype) {
    PSHM_SCATTER_CASE(PSHM_INT32, int32_t, int32)
    PSHM_SCATTER_CASE(PSHM_INT64, int64_t, int64)
    PSHM_SCATTER_CASE(PSHM_UINT32, uint32_t, uint32)
    PSHM_SCATTER_CASE(PSHM_UINT64, uint64_t, uint64)
    PSHM_SCATTER_CASE(PSHM_FLOAT32, float, float32)
    PSHM_SCATTER_CASE(PSHM_FLOAT64, double, float64)
    default:
        errno = EINVAL;
        return -1;
    }
}

int pshm_scatter(int op, int dtype, void *base, const int64_t *index,
                 const void *values, void *previous, uint64_t n)
{
    return pshm_scatter_step(op, dtype, base, index, values, 1, previous, n);
}

int pshm_scatter_scalar(int op, int dtype, void *base, const int64_t *index,
                        const void *value, void *previous, uint64_t n)
{
    return pshm_scatter_step(op, dtype, base, index, value, 0, previous, n);
}

#define PSHM_SCATTER_CAS_CASE(DTYPE, T, SUF)                                   \
    case DTYPE:                                                                \
        pshm_scatter_cas_##SUF((T *)base, index, (const T *)expected,          \
                               (const T *)desired, (T *)found, n);             \
        return 0;

int pshm_scatter_cas(int dtype, void *base, const int64_t *index,
                     const void *expected, const void *desired, void *found,
                     uint64_t n)
{
    switch (dtype) {
    PSHM_SCATTER_CAS_CASE(PSHM_INT32, int32_t, int32)
    PSHM_SCATTER_CAS_CASE(PSHM_INT64, int64_t, int64)
    PSHM_SCATTER_CAS_CASE(PSHM_UINT32, uint32_t, uint32)
    PSHM_SCATTER_CAS_CASE(PSHM_UINT64, uint64_t, uint64)
    PSHM_SCATTER_CAS_CASE(PSHM_FLOAT32, float, float32)
    PSHM_SCATTER_CAS_CASE(PSHM_FLOAT64, double, float64)
    default:
        errno = EINVAL;
        return -1;
    }
}

int pshm_lock_free(void)
{
    return 1;   /* guaranteed by the static assertion of the ladder above */
}


/* ======================================================================
 * Segments: files (normally under /dev/shm) mapped MAP_SHARED.
 * ====================================================================== */

#ifndef _WIN32

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

static int pshm_open_retry(const char *path, int flags, mode_t mode)
{
    int fd;
    do {
        fd = open(path, flags, mode);
    } while (fd < 0 && errno == EINTR);
    return fd;
}

/* Give fd `size` bytes of real storage, so that a full disk or a file-size
 * limit fails here (ENOSPC, EFBIG) rather than later as SIGBUS on a page
 * fault.  File systems without fallocate get a sparse ftruncate instead. */
static int pshm_reserve(int fd, off_t size)
{
    int err;
    do {
        err = posix_fallocate(fd, 0, size);   /* returns an errno value */
    } while (err == EINTR);
    if (err == EOPNOTSUPP || err == EINVAL) {
        int rc;
        do {
            rc = ftruncate(fd, size);
        } while (rc < 0 && errno == EINTR);
        return rc;
    }
    if (err != 0) {
        errno = err;
        return -1;
    }
    return 0;
}

int pshm_create(const char *path, uint64_t size)
{
    off_t length = (off_t)size;
    if (length < 0 || (uint64_t)length != size) {
        errno = EFBIG;
        return -1;
    }
    int fd = pshm_open_retry(path, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    if (size > 0 && pshm_reserve(fd, length) < 0) {
        int saved = errno;
        close(fd);
        unlink(path);
        errno = saved;
        return -1;
    }
    return fd;
}

int pshm_open(const char *path, int writable)
{
    return pshm_open_retry(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC, 0);
}

void *pshm_map(int fd, uint64_t size, int writable)
{
    if (size > SIZE_MAX) {
        errno = ENOMEM;
        return NULL;
    }
    int prot = writable ? PROT_READ | PROT_WRITE : PROT_READ;
    void *addr = mmap(NULL, (size_t)size, prot, MAP_SHARED, fd, 0);
    return addr == MAP_FAILED ? NULL : addr;
}

int pshm_unmap(void *addr, uint64_t size)
{
    if (size > SIZE_MAX) {
        errno = EINVAL;
        return -1;
    }
    return munmap(addr, (size_t)size);
}

int pshm_close(int fd)
{
    if (close(fd) < 0 && errno != EINTR)
        return -1;
    return 0;
}

int pshm_unlink(const char *path)
{
    int rc;
    do {
        rc = unlink(path);
    } while (rc < 0 && errno == EINTR);
    return rc;
}

#else   /* _WIN32: no segments yet; parallel.py falls back to Python's mmap */

int pshm_create(const char *path, uint64_t size)
{
    (void)path; (void)size;
    errno = ENOSYS;
    return -1;
}

int pshm_open(const char *path, int writable)
{
    (void)path; (void)writable;
    errno = ENOSYS;
    return -1;
}

void *pshm_map(int fd, uint64_t size, int writable)
{
    (void)fd; (void)size; (void)writable;
    errno = ENOSYS;
    return NULL;
}

int pshm_unmap(void *addr, uint64_t size)
{
    (void)addr; (void)size;
    errno = ENOSYS;
    return -1;
}

int pshm_close(int fd)
{
    (void)fd;
    errno = ENOSYS;
    return -1;
}

int pshm_unlink(const char *path)
{
    (void)path;
    errno = ENOSYS;
    return -1;
}

#endif
