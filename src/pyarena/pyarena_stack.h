/* The stack of a sampled allocation, for heap profiles.
 *
 * Go's mProf_Malloc (runtime/mprof.go) records the allocating goroutine's
 * return PCs into a fixed array of maxStack (32) words with runtime.callers,
 * hashes them into a bucket, and turns PCs into function/file/line only when
 * the profile is written. Symbolization is deferred because it is the
 * expensive part and most samples land in buckets that already exist.
 *
 * This header does the same for Python. A sampled allocation made by a thread
 * that holds the GIL records up to PYARENA_STACK_MAX (code object, instruction
 * offset) pairs, innermost first: the code object stands for Go's function,
 * the instruction offset for its PC. Lines are resolved later, from the code
 * object's line table (pyarena_frame_line). A thread without the GIL may not
 * look at Python frames at all, so it records one frame naming the C-level
 * API it came through, and optionally the native return addresses of its
 * callers (backtrace), symbolized later with dladdr.
 *
 * Capturing creates no Python object, takes no reference and allocates
 * nothing. That matters twice: it keeps a sample cheap, and it keeps the
 * allocator from re-entering itself (a new Python object may start a cyclic
 * collection, which may run __del__, which may allocate or free in the very
 * heap whose mcache is being updated). The captured code pointers are
 * borrowed: they stay valid while those frames run, i.e. until the
 * allocation call returns. A bucket that outlives the call must own them:
 * pyarena_stack_retain takes one strong reference per frame, once, when a new
 * bucket is created; a sample that lands in an existing bucket costs none.
 *
 * On CPython 3.11 to 3.13 the capture walks the interpreter's
 * _PyInterpreterFrame list directly (the walk PyThreadState_GetFrame and
 * PyFrame_GetBack make, without materializing a frame object per frame).
 * Other versions, free-threaded builds, or a build with
 * PYARENA_STACK_PUBLIC_API defined use the public frame API, which is
 * correct everywhere but creates a frame object for each frame that has
 * none yet: ~4x the cost of the walk when they exist, an allocation (and
 * possibly a collection) when they do not.
 *
 * Include Python.h first (it defines _GNU_SOURCE, which dladdr needs).
 */
#ifndef PYARENA_STACK_H
#define PYARENA_STACK_H

#include <Python.h>
#include <frameobject.h>
#include <stdint.h>
#include <string.h>
#include <dlfcn.h>
#include <execinfo.h>

/* The interpreter-frame walk is built for the CPython versions whose frame
 * layout it knows (3.11 to 3.13, GIL builds); any other gets the public API. */
#if !defined(PYARENA_STACK_PUBLIC_API) && !defined(PYPY_VERSION) && !defined(Py_GIL_DISABLED) \
    && PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030E0000
#  define PYARENA_STACK_FAST 1
   /* The interpreter frame struct is internal; Cython reaches it the same
    * way. Define Py_BUILD_CORE only around the include. */
#  ifndef Py_BUILD_CORE
#    define Py_BUILD_CORE 1
#    define PYARENA_STACK_UNDEF_BUILD_CORE
#  endif
#  include "internal/pycore_frame.h"
#  ifdef PYARENA_STACK_UNDEF_BUILD_CORE
#    undef Py_BUILD_CORE
#    undef PYARENA_STACK_UNDEF_BUILD_CORE
#  endif
   /* Where each version keeps the running frame, its code object and its
    * instruction pointer. 3.12 and 3.13 also link C-stack "shim" frames
    * into the list, which are no Python frame; 3.13 frames may run
    * something other than a code object. */
#  if PY_VERSION_HEX >= 0x030D0000
#    define PYARENA_CURRENT_FRAME(ts) ((ts)->current_frame)
#    define PYARENA_FRAME_CODE(f) ((f)->f_executable)
#    define PYARENA_FRAME_INSTR(f) ((f)->instr_ptr)
#    define PYARENA_FRAME_IS_SHIM(f) ((f)->owner == FRAME_OWNED_BY_CSTACK)
#  elif PY_VERSION_HEX >= 0x030C0000
#    define PYARENA_CURRENT_FRAME(ts) ((ts)->cframe->current_frame)
#    define PYARENA_FRAME_CODE(f) ((PyObject *)(f)->f_code)
#    define PYARENA_FRAME_INSTR(f) ((f)->prev_instr)
#    define PYARENA_FRAME_IS_SHIM(f) ((f)->owner == FRAME_OWNED_BY_CSTACK)
#  else
#    define PYARENA_CURRENT_FRAME(ts) ((ts)->cframe->current_frame)
#    define PYARENA_FRAME_CODE(f) ((PyObject *)(f)->f_code)
#    define PYARENA_FRAME_INSTR(f) ((f)->prev_instr)
#    define PYARENA_FRAME_IS_SHIM(f) 0
#  endif
#else
#  define PYARENA_STACK_FAST 0
#endif

/* Go's maxStack: deeper stacks keep their innermost 32 frames and are
 * marked truncated (Go drops the rest silently; we mark them so a profile
 * can show them under one synthetic root). */
#define PYARENA_STACK_MAX 32

/* What a frame's id means. */
enum {
    PYARENA_FRAME_PY = 0,     /* id: PyCodeObject *, where: instruction byte offset */
    PYARENA_FRAME_API = 1,    /* id: static const char * naming the C-level API */
    PYARENA_FRAME_NATIVE = 2  /* id: a native return address (backtrace) */
};

typedef struct {
    void *id;
    int32_t where;  /* PY: byte offset of the current instruction (f_lasti); else 0 */
    int32_t kind;   /* PYARENA_FRAME_* */
} pyarena_frame;

typedef struct {
    int32_t n;          /* frames recorded, 0..PYARENA_STACK_MAX */
    int32_t truncated;  /* 1 if the stack had frames beyond f[n-1] */
    pyarena_frame f[PYARENA_STACK_MAX];  /* innermost first */
} pyarena_stack;

/* pyarena_stack_capture records the calling thread's Python stack.
 *
 * Precondition: the caller holds the GIL. Returns the number of frames
 * recorded (0 if the thread runs no Python code, e.g. during finalization). */
static inline int
pyarena_stack_capture(pyarena_stack *s)
{
    int n = 0;
    s->truncated = 0;
#if PYARENA_STACK_FAST
    /* With the GIL held, the GIL holder's thread state is ours. */
    PyThreadState *ts = _PyThreadState_UncheckedGet();
    _PyInterpreterFrame *f = ts != NULL ? PYARENA_CURRENT_FRAME(ts) : NULL;
    for (; f != NULL; f = f->previous) {
        PyObject *code = PYARENA_FRAME_CODE(f);
        _Py_CODEUNIT *first;
        if (PYARENA_FRAME_IS_SHIM(f) || !PyCode_Check(code))
            continue;
        first = _PyCode_CODE((PyCodeObject *)code);
        /* Frames still setting up their cells or generator are skipped, as
         * PyFrame_GetBack skips them (_PyFrame_IsIncomplete): their
         * instruction pointer is not yet meaningful. */
        if (f->owner != FRAME_OWNED_BY_GENERATOR
            && PYARENA_FRAME_INSTR(f) < first + ((PyCodeObject *)code)->_co_firsttraceable)
            continue;
        if (n == PYARENA_STACK_MAX) {
            s->truncated = 1;
            break;
        }
        s->f[n].id = (void *)code;
        s->f[n].where = (int32_t)(PYARENA_FRAME_INSTR(f) - first) * (int32_t)sizeof(_Py_CODEUNIT);
        s->f[n].kind = PYARENA_FRAME_PY;
        n++;
    }
#else
    PyThreadState *ts = PyThreadState_Get();
    PyFrameObject *fr = PyThreadState_GetFrame(ts);  /* new reference or NULL */
    while (fr != NULL) {
        PyFrameObject *back;
        if (n == PYARENA_STACK_MAX) {
            s->truncated = 1;
            Py_DECREF(fr);
            break;
        }
        PyCodeObject *code = PyFrame_GetCode(fr);  /* new reference */
        /* Borrowed from here on: the running frame keeps its code alive. */
        Py_DECREF(code);
        s->f[n].id = (void *)code;
        s->f[n].where = PyFrame_GetLasti(fr);
        s->f[n].kind = PYARENA_FRAME_PY;
        n++;
        back = PyFrame_GetBack(fr);
        Py_DECREF(fr);
        fr = back;
    }
#endif
    s->n = n;
    return n;
}

/* pyarena_stack_capture_api records one frame naming the C-level entry point
 * (a string literal, or any string that lives as long as the profile).
 * Safe without the GIL. */
static inline int
pyarena_stack_capture_api(pyarena_stack *s, const char *api)
{
    s->f[0].id = (void *)api;
    s->f[0].where = 0;
    s->f[0].kind = PYARENA_FRAME_API;
    s->n = 1;
    s->truncated = 0;
    return 1;
}

/* pyarena_stack_capture_native records the API frame, then the native return
 * addresses of its callers, skipping the innermost `skip` native frames (this
 * function's own caller chain inside pyarena). Safe without the GIL.
 *
 * glibc's backtrace loads libgcc_s on its first call, which allocates; call
 * pyarena_stack_native_init once (with the GIL, at import) so that first call
 * is not made from inside an allocation. */
static inline int
pyarena_stack_capture_native(pyarena_stack *s, const char *api, int skip)
{
    void *pcs[PYARENA_STACK_MAX + 16];
    int got, i, n;
    if (skip < 0)
        skip = 0;
    if (skip > 16)
        skip = 16;
    pyarena_stack_capture_api(s, api);
    /* The API frame takes one slot, so PYARENA_STACK_MAX - 1 native frames
     * fit; ask for one more to know whether the stack was truncated. */
    got = backtrace(pcs, skip + PYARENA_STACK_MAX);
    n = 1;
    for (i = skip; i < got && n < PYARENA_STACK_MAX; i++, n++) {
        s->f[n].id = pcs[i];
        s->f[n].where = 0;
        s->f[n].kind = PYARENA_FRAME_NATIVE;
    }
    s->truncated = i < got;
    s->n = n;
    return n;
}

static inline void
pyarena_stack_native_init(void)
{
    void *pc[2];
    (void)backtrace(pc, 2);
}

/* pyarena_stack_capture_auto: the Python stack if this thread holds the GIL,
 * else the API frame alone. PyGILState_Check compares the GIL holder with
 * this thread's own thread state; it costs a TLS lookup. A caller that knows
 * whether it holds the GIL should call the right function directly. */
static inline int
pyarena_stack_capture_auto(pyarena_stack *s, const char *api)
{
    if (PyGILState_Check())
        return pyarena_stack_capture(s);
    return pyarena_stack_capture_api(s, api);
}

/* pyarena_stack_hash hashes a stack and an allocation size the way Go's
 * stkbucket does (Jenkins' one-at-a-time mix), so buckets key on (stack,
 * size) like Go's. */
static inline uintptr_t
pyarena_stack_hash(const pyarena_stack *s, uintptr_t size)
{
    uintptr_t h = 0;
    int i;
    for (i = 0; i < s->n; i++) {
        h += (uintptr_t)s->f[i].id ^ ((uintptr_t)(uint32_t)s->f[i].where << 1) ^ (uintptr_t)s->f[i].kind;
        h += h << 10;
        h ^= h >> 6;
    }
    h += (uintptr_t)s->truncated;
    h += h << 10;
    h ^= h >> 6;
    h += size;
    h += h << 10;
    h ^= h >> 6;
    h += h << 3;
    h ^= h >> 11;
    return h;
}

static inline int
pyarena_stack_equal(const pyarena_stack *a, const pyarena_stack *b)
{
    int i;
    if (a->n != b->n || a->truncated != b->truncated)
        return 0;
    for (i = 0; i < a->n; i++) {
        if (a->f[i].id != b->f[i].id || a->f[i].where != b->f[i].where || a->f[i].kind != b->f[i].kind)
            return 0;
    }
    return 1;
}

/* pyarena_stack_retain takes a strong reference to each code object, for a
 * stack about to be stored in a new bucket. Precondition: the GIL, and the
 * frames still running (the stack was captured during this call). */
static inline void
pyarena_stack_retain(const pyarena_stack *s)
{
    int i;
    for (i = 0; i < s->n; i++) {
        if (s->f[i].kind == PYARENA_FRAME_PY)
            Py_INCREF((PyObject *)s->f[i].id);
    }
}

/* pyarena_stack_release drops what pyarena_stack_retain took. Needs the GIL. */
static inline void
pyarena_stack_release(const pyarena_stack *s)
{
    int i;
    for (i = 0; i < s->n; i++) {
        if (s->f[i].kind == PYARENA_FRAME_PY)
            Py_DECREF((PyObject *)s->f[i].id);
    }
}

/* pyarena_frame_line resolves a Python frame's line from its code object's
 * line table, as PyFrame_GetLineNumber does. Needs the GIL and a live code
 * object (a running frame's, or a retained one). -1 if unknown. */
static inline int
pyarena_frame_line(const pyarena_frame *f)
{
    if (f->kind != PYARENA_FRAME_PY)
        return 0;
    return PyCode_Addr2Line((PyCodeObject *)f->id, f->where);
}

/* pyarena_frame_native_symbol names a native frame with dladdr: the nearest
 * exported symbol (NULL if none, e.g. a static function) and the file of the
 * shared object holding the address. Returns 0 if the address is in no
 * loaded object. Safe without the GIL. */
static inline int
pyarena_frame_native_symbol(const pyarena_frame *f, const char **symbol, const char **file,
                            uintptr_t *offset)
{
    Dl_info info;
    *symbol = NULL;
    *file = NULL;
    *offset = 0;
    if (f->kind != PYARENA_FRAME_NATIVE || dladdr(f->id, &info) == 0)
        return 0;
    *symbol = info.dli_sname;
    *file = info.dli_fname;
    *offset = (uintptr_t)f->id - (uintptr_t)(info.dli_sname != NULL ? info.dli_saddr : info.dli_fbase);
    return 1;
}

#endif /* PYARENA_STACK_H */
