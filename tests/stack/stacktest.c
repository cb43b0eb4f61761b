/* A test-only extension over pyarena_stack.h, compiled at test time by
 * tests/test_stack.py (as tests/test_extending.py compiles its example).
 *
 * Built twice from this one file: STACKTEST_MODULE=_stacktest_fast uses the
 * header's 3.11 interpreter-frame walk, _stacktest_public the public frame
 * API (PYARENA_STACK_PUBLIC_API), so the tests can hold one against the
 * other. The functions turn captured stacks into Python values only after
 * the capture, the way a profile snapshot would. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "pyarena_stack.h"

#ifndef STACKTEST_MODULE
#  define STACKTEST_MODULE _stacktest_fast
#endif
#define STACKTEST_STR2(x) #x
#define STACKTEST_STR(x) STACKTEST_STR2(x)
#define STACKTEST_CAT2(a, b) a##b
#define STACKTEST_CAT(a, b) STACKTEST_CAT2(a, b)

/* (filename, qualname, line, firstlineno) per Python frame; (None, api, 0, 0)
 * for an API frame; (file, symbol, offset, -1) for a native frame. */
static PyObject *
stack_to_list(const pyarena_stack *s)
{
    PyObject *out = PyList_New(0);
    int i;
    if (out == NULL)
        return NULL;
    for (i = 0; i < s->n; i++) {
        const pyarena_frame *f = &s->f[i];
        PyObject *item;
        if (f->kind == PYARENA_FRAME_PY) {
            PyCodeObject *co = (PyCodeObject *)f->id;
            item = Py_BuildValue("(OOii)", co->co_filename, co->co_qualname,
                                 pyarena_frame_line(f), co->co_firstlineno);
        } else if (f->kind == PYARENA_FRAME_API) {
            item = Py_BuildValue("(Osii)", Py_None, (const char *)f->id, 0, 0);
        } else {
            const char *sym, *file;
            uintptr_t off;
            pyarena_frame_native_symbol(f, &sym, &file, &off);
            item = Py_BuildValue("(zzni)", file, sym, (Py_ssize_t)off, -1);
        }
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(item);
    }
    return out;
}

static PyObject *
capture(PyObject *self, PyObject *unused)
{
    pyarena_stack s;
    PyObject *frames;
    pyarena_stack_capture(&s);
    frames = stack_to_list(&s);
    if (frames == NULL)
        return NULL;
    return Py_BuildValue("(NO)", frames, s.truncated ? Py_True : Py_False);
}

/* The raw capture: (code object, byte offset) pairs, for identity checks. */
static PyObject *
capture_raw(PyObject *self, PyObject *unused)
{
    pyarena_stack s;
    PyObject *out;
    int i;
    pyarena_stack_capture(&s);
    out = PyList_New(s.n);
    if (out == NULL)
        return NULL;
    for (i = 0; i < s.n; i++) {
        PyObject *item = Py_BuildValue("(Oi)", (PyObject *)s.f[i].id, s.f[i].where);
        if (item == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, item);
    }
    return Py_BuildValue("(Ni)", out, s.truncated);
}

/* Two captures from the same line hash alike and compare equal; a retained
 * stack keeps its code objects alive. Returns (hash1 == hash2, equal,
 * refcount delta of the innermost code object across retain). */
static PyObject *
capture_twice(PyObject *self, PyObject *unused)
{
    pyarena_stack a, b;
    Py_ssize_t before, after;
    int same_hash, equal, other_size;
    pyarena_stack_capture(&a);
    pyarena_stack_capture(&b);
    if (a.n == 0)
        Py_RETURN_NONE;
    same_hash = pyarena_stack_hash(&a, 64) == pyarena_stack_hash(&b, 64);
    other_size = pyarena_stack_hash(&a, 64) != pyarena_stack_hash(&a, 128);
    equal = pyarena_stack_equal(&a, &b);
    before = Py_REFCNT((PyObject *)a.f[0].id);
    pyarena_stack_retain(&a);
    after = Py_REFCNT((PyObject *)a.f[0].id);
    pyarena_stack_release(&a);
    return Py_BuildValue("(iiin)", same_hash, other_size, equal, after - before);
}

static PyObject *
capture_nogil(PyObject *self, PyObject *arg)
{
    pyarena_stack s;
    const char *api = "pyarena_malloc";
    Py_BEGIN_ALLOW_THREADS
    pyarena_stack_capture_auto(&s, api);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(NO)", stack_to_list(&s), s.truncated ? Py_True : Py_False);
}

static PyObject *
capture_auto(PyObject *self, PyObject *unused)
{
    pyarena_stack s;
    pyarena_stack_capture_auto(&s, "pyarena_malloc");
    return Py_BuildValue("(NO)", stack_to_list(&s), s.truncated ? Py_True : Py_False);
}

/* Exported (not static) so dladdr can name them in a native backtrace. */
__attribute__((noinline)) int
stacktest_native_leaf(pyarena_stack *s, int skip)
{
    return pyarena_stack_capture_native(s, "pyarena_malloc", skip);
}

__attribute__((noinline)) int
stacktest_native_recurse(pyarena_stack *s, int depth, int skip)
{
    int n;
    if (depth > 0)
        n = stacktest_native_recurse(s, depth - 1, skip);
    else
        n = stacktest_native_leaf(s, skip);
    /* Not a tail call, so each level keeps its frame. */
    __asm__ volatile("" ::: "memory");
    return n;
}

static PyObject *
capture_native(PyObject *self, PyObject *args)
{
    pyarena_stack s;
    int depth = 0, skip = 0;
    if (!PyArg_ParseTuple(args, "|ii", &depth, &skip))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    stacktest_native_recurse(&s, depth, skip);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(NO)", stack_to_list(&s), s.truncated ? Py_True : Py_False);
}

/* The measured loops (callgrind --toggle-collect=stacktest_bench_*). */
__attribute__((noinline)) long
stacktest_bench_capture(long n)
{
    pyarena_stack s;
    long i, total = 0;
    for (i = 0; i < n; i++) {
        pyarena_stack_capture(&s);
        total += s.n;
    }
    return total;
}

__attribute__((noinline)) long
stacktest_bench_capture_hash(long n)
{
    pyarena_stack s;
    long i;
    uintptr_t h = 0;
    for (i = 0; i < n; i++) {
        pyarena_stack_capture(&s);
        h ^= pyarena_stack_hash(&s, 64);
    }
    return (long)(h & 1);
}

__attribute__((noinline)) long
stacktest_bench_lines(long n)
{
    pyarena_stack s;
    long i, total = 0;
    int k;
    for (i = 0; i < n; i++) {
        pyarena_stack_capture(&s);
        for (k = 0; k < s.n; k++)
            total += pyarena_frame_line(&s.f[k]);
    }
    return total;
}

__attribute__((noinline)) long
stacktest_bench_gilcheck(long n)
{
    pyarena_stack s;
    long i, total = 0;
    for (i = 0; i < n; i++) {
        pyarena_stack_capture_auto(&s, "pyarena_malloc");
        total += s.n;
    }
    return total;
}

__attribute__((noinline)) long
stacktest_bench_native(long n)
{
    pyarena_stack s;
    long i, total = 0;
    for (i = 0; i < n; i++) {
        pyarena_stack_capture_native(&s, "pyarena_malloc", 0);
        total += s.n;
    }
    return total;
}

/* Where the loops' results go, so the compiler keeps the loops; bench()
 * returns None so that measuring it allocates nothing. */
volatile long stacktest_sink;

static PyObject *
bench(PyObject *self, PyObject *args)
{
    long n, r;
    const char *what = "capture";
    if (!PyArg_ParseTuple(args, "l|s", &n, &what))
        return NULL;
    if (strcmp(what, "capture") == 0)
        r = stacktest_bench_capture(n);
    else if (strcmp(what, "hash") == 0)
        r = stacktest_bench_capture_hash(n);
    else if (strcmp(what, "lines") == 0)
        r = stacktest_bench_lines(n);
    else if (strcmp(what, "gilcheck") == 0)
        r = stacktest_bench_gilcheck(n);
    else if (strcmp(what, "native") == 0)
        r = stacktest_bench_native(n);
    else if (strcmp(what, "none") == 0)
        r = n;
    else {
        PyErr_Format(PyExc_ValueError, "unknown bench %s", what);
        return NULL;
    }
    stacktest_sink = r;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"capture", capture, METH_NOARGS, NULL},
    {"capture_raw", capture_raw, METH_NOARGS, NULL},
    {"capture_twice", capture_twice, METH_NOARGS, NULL},
    {"capture_nogil", capture_nogil, METH_NOARGS, NULL},
    {"capture_auto", capture_auto, METH_NOARGS, NULL},
    {"capture_native", capture_native, METH_VARARGS, NULL},
    {"bench", bench, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, STACKTEST_STR(STACKTEST_MODULE), NULL, -1, methods,
};

PyMODINIT_FUNC
STACKTEST_CAT(PyInit_, STACKTEST_MODULE)(void)
{
    PyObject *m;
    pyarena_stack_native_init();
    m = PyModule_Create(&moduledef);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "FAST", PYARENA_STACK_FAST) < 0
        || PyModule_AddIntConstant(m, "STACK_MAX", PYARENA_STACK_MAX) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
