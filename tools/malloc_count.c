/*
 * malloc_count.c: an LD_PRELOAD interposer that counts a process's calls
 * of malloc, calloc, realloc and the memalign family, and their bytes, by
 * the shared object that asked. Developer tooling for tools/traffic.py;
 * nothing in the library loads it.
 *
 * Counting is off until mc_enable(1), so a caller counts one stretch of
 * its run (a steady-state pass of a workload) and not its start-up. While
 * on, every call unwinds its stack (backtrace(), a few microseconds) and
 * charges the call to the first frame outside the plumbing, that is
 * outside libc, libstdc++, libgcc and this file:
 *
 *   - a frame in an extension or library (libscipy_openblas, _umath_linalg,
 *     _pocketfft_umath, _multiarray_umath, ...) is charged to it;
 *   - a frame in the interpreter (python, libpython) is charged to the first
 *     non-interpreter frame further up, as "python<-NAME": the C API used
 *     on NAME's behalf (PyMem_RawMalloc, objects over pymalloc's 512 bytes);
 *     when none is within reach, to "python" alone (the interpreter's own).
 *
 * The real allocator is glibc's, called through its __libc_* entry points,
 * which need no dlsym at start-up (dlsym itself may allocate). free is not
 * counted and not wrapped.
 *
 * Build: cc -O2 -shared -fPIC -o malloc_count.so malloc_count.c -ldl
 * Use:   LD_PRELOAD=./malloc_count.so python ...; from Python, ctypes:
 *        mc_enable(1|0), mc_reset(), mc_report(path) writes one line a
 *        caller: "kind<TAB>caller<TAB>calls<TAB>bytes".
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <execinfo.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

enum { K_MALLOC, K_CALLOC, K_REALLOC, K_MEMALIGN, NKINDS };
static const char *kind_names[NKINDS] = {"malloc", "calloc", "realloc", "memalign"};

/* Callers are interned names; a charge is (kind, caller). 512 callers are
 * far more than a NumPy process loads. */
#define MAX_CALLERS 512
#define NAME_LEN 160
static char caller_names[MAX_CALLERS][NAME_LEN];
static int ncallers;
static uint64_t calls[NKINDS][MAX_CALLERS], bytes[NKINDS][MAX_CALLERS];

/* Return address -> the object that holds it, cached: dladdr walks the
 * loaded objects each time. Open addressing, 2^16 slots. */
#define CACHE_BITS 16
static struct { uintptr_t addr; short obj; } cache[1 << CACHE_BITS];
#define MAX_OBJS 512
static char obj_names[MAX_OBJS][NAME_LEN];
static unsigned char obj_kind[MAX_OBJS];    /* 0 other, 1 plumbing, 2 interpreter */
static int nobjs;

static volatile int enabled;
static volatile int lock;                   /* one unwinding thread at a time */
static __thread int inside;                 /* this thread is already counting */

static const char *base_name(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static int classify(const char *name) {
    static const char *plumbing[] = {"libc.so", "libc-", "libstdc++", "libgcc_s", "malloc_count",
                                     "ld-linux", "libm.so", "libpthread", NULL};
    for (int i = 0; plumbing[i]; i++)
        if (strncmp(name, plumbing[i], strlen(plumbing[i])) == 0)
            return 1;
    if (strncmp(name, "python", 6) == 0 || strncmp(name, "libpython", 9) == 0)
        return 2;
    return 0;
}

static int intern(char (*names)[NAME_LEN], int *n, int max, const char *s) {
    for (int i = 0; i < *n; i++)
        if (strcmp(names[i], s) == 0)
            return i;
    if (*n == max)
        return max - 1;                     /* the last slot takes the overflow */
    snprintf(names[*n], NAME_LEN, "%s", s);
    return (*n)++;
}

static int object_of(void *addr) {
    uintptr_t a = (uintptr_t)addr;
    size_t i = (a * 0x9E3779B97F4A7C15ull) >> (64 - CACHE_BITS);
    for (;;) {
        if (cache[i].addr == a)
            return cache[i].obj;
        if (cache[i].addr == 0)
            break;
        i = (i + 1) & ((1 << CACHE_BITS) - 1);
    }
    Dl_info info;
    const char *name = "?";
    if (dladdr(addr, &info) && info.dli_fname && info.dli_fname[0])
        name = base_name(info.dli_fname);
    int before = nobjs;
    int obj = intern(obj_names, &nobjs, MAX_OBJS, name);
    if (nobjs != before)
        obj_kind[obj] = (unsigned char)classify(name);
    cache[i].addr = a;                      /* a full table just stops caching */
    cache[i].obj = (short)obj;
    return obj;
}

static void charge(int kind, size_t size) {
    if (!enabled || inside)
        return;
    inside = 1;
    while (__atomic_exchange_n(&lock, 1, __ATOMIC_ACQUIRE))
        ;
    void *frames[24];
    int n = backtrace(frames, 24);
    char name[NAME_LEN] = "python";
    int seen_python = 0, found = 0;
    for (int f = 1; f < n && !found; f++) {
        int obj = object_of(frames[f]);
        switch (obj_kind[obj]) {
        case 1:
            break;
        case 2:
            seen_python = 1;
            break;
        default:
            if (seen_python)
                snprintf(name, NAME_LEN, "python<-%s", obj_names[obj]);
            else
                snprintf(name, NAME_LEN, "%s", obj_names[obj]);
            found = 1;
        }
    }
    if (!found && !seen_python)
        snprintf(name, NAME_LEN, "?");
    int c = intern(caller_names, &ncallers, MAX_CALLERS, name);
    calls[kind][c]++;
    bytes[kind][c] += size;
    __atomic_store_n(&lock, 0, __ATOMIC_RELEASE);
    inside = 0;
}

void *malloc(size_t size) {
    charge(K_MALLOC, size);
    return __libc_malloc(size);
}

void *calloc(size_t n, size_t size) {
    charge(K_CALLOC, n * size);
    return __libc_calloc(n, size);
}

void *realloc(void *p, size_t size) {
    charge(K_REALLOC, size);
    return __libc_realloc(p, size);
}

void *memalign(size_t align, size_t size) {
    charge(K_MEMALIGN, size);
    return __libc_memalign(align, size);
}

void *aligned_alloc(size_t align, size_t size) {
    charge(K_MEMALIGN, size);
    return __libc_memalign(align, size);
}

int posix_memalign(void **out, size_t align, size_t size) {
    if (align < sizeof(void *) || (align & (align - 1)))
        return EINVAL;
    charge(K_MEMALIGN, size);
    void *p = __libc_memalign(align, size);
    if (p == NULL && size)
        return ENOMEM;
    *out = p;
    return 0;
}

/* Load libgcc's unwinder now: backtrace() dlopens it on first use, and that
 * first use must not happen inside a counted malloc of another library. */
__attribute__((constructor)) static void prime(void) {
    void *f[2];
    inside = 1;
    backtrace(f, 2);
    inside = 0;
}

void mc_enable(int on) { enabled = on; }

void mc_reset(void) {
    while (__atomic_exchange_n(&lock, 1, __ATOMIC_ACQUIRE))
        ;
    memset(calls, 0, sizeof calls);
    memset(bytes, 0, sizeof bytes);
    __atomic_store_n(&lock, 0, __ATOMIC_RELEASE);
}

int mc_report(const char *path) {
    int was = enabled;
    enabled = 0;                            /* fopen and fprintf allocate */
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        enabled = was;
        return -1;
    }
    for (int k = 0; k < NKINDS; k++)
        for (int c = 0; c < ncallers; c++)
            if (calls[k][c])
                fprintf(f, "%s\t%s\t%llu\t%llu\n", kind_names[k], caller_names[c],
                        (unsigned long long)calls[k][c], (unsigned long long)bytes[k][c]);
    fclose(f);
    enabled = was;
    return 0;
}
