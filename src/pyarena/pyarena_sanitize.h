/* pyarena_sanitize.h: what a debug heap tells AddressSanitizer and
 * valgrind's memcheck about its memory.
 *
 * A debug heap (_mdebug) keeps a redzone after every object and a freed
 * pattern in every freed slot, and checks both when it next looks (at the
 * free, at reuse, in Heap.check()). A sanitizer can do better: stop at the
 * faulting instruction. So, when the build has one:
 *
 *   - AddressSanitizer (gcc and clang define __SANITIZE_ADDRESS__, clang
 *     also __has_feature(address_sanitizer)): redzones and freed slots are
 *     poisoned, objects unpoisoned when they are handed out;
 *   - valgrind (its memcheck.h present at build time, and not turned off
 *     with -DPYARENA_NO_VALGRIND): every object is a MALLOCLIKE block and
 *     every free a FREELIKE one; redzones and freed slots are NOACCESS.
 *
 * Only a debug heap's paths and the page heap's hand-out and unmap call
 * these, so a release heap's fast paths are the same instructions with or
 * without them. Without a sanitizer every macro is empty.
 *
 * The protocol, kept by _mdebug and _malloc:
 *   - a live object's bytes are open, its redzone closed;
 *   - a freed slot of a debug heap is closed, whole;
 *   - pyarena itself opens what it must read or write (the size word, a
 *     redzone, a freed slot), and closes it again after;
 *   - a span the page heap hands out is opened whole (it may hold a debug
 *     heap's closed slots from before), and so is a debug heap's memory
 *     before munmap (ASAN's shadow outlives the mapping).
 */
#ifndef PYARENA_SANITIZE_H
#define PYARENA_SANITIZE_H

#include <stddef.h>
#include <stdint.h>

#if defined(__SANITIZE_ADDRESS__)
#  define PYARENA_ASAN 1
#elif defined(__has_feature)
#  if __has_feature(address_sanitizer)
#    define PYARENA_ASAN 1
#  endif
#endif
#ifndef PYARENA_ASAN
#  define PYARENA_ASAN 0
#endif

#if PYARENA_ASAN
#  include <sanitizer/asan_interface.h>
#  define pyarena_asan_open(p, n)  ASAN_UNPOISON_MEMORY_REGION((void *)(p), (size_t)(n))
#  define pyarena_asan_close(p, n) ASAN_POISON_MEMORY_REGION((void *)(p), (size_t)(n))
#else
#  define pyarena_asan_open(p, n)  ((void)(p), (void)(n))
#  define pyarena_asan_close(p, n) ((void)(p), (void)(n))
#endif

#if !defined(PYARENA_NO_VALGRIND) && defined(__has_include)
#  if __has_include(<valgrind/memcheck.h>)
#    include <valgrind/memcheck.h>
#    define PYARENA_VALGRIND 1
#  endif
#endif
#ifndef PYARENA_VALGRIND
#  define PYARENA_VALGRIND 0
#endif

#if PYARENA_VALGRIND
#  define pyarena_vg_open(p, n)  VALGRIND_MAKE_MEM_DEFINED((void *)(p), (size_t)(n))
#  define pyarena_vg_close(p, n) VALGRIND_MAKE_MEM_NOACCESS((void *)(p), (size_t)(n))
   /* rzB 0: the redzone is made NOACCESS by pyarena_mem_close itself. */
#  define pyarena_vg_malloclike(p, n, zeroed) \
       VALGRIND_MALLOCLIKE_BLOCK((void *)(p), (size_t)(n), 0, (zeroed))
#  define pyarena_vg_freelike(p) VALGRIND_FREELIKE_BLOCK((void *)(p), 0)
#else
#  define pyarena_vg_open(p, n)  ((void)(p), (void)(n))
#  define pyarena_vg_close(p, n) ((void)(p), (void)(n))
#  define pyarena_vg_malloclike(p, n, zeroed) ((void)(p), (void)(n), (void)(zeroed))
#  define pyarena_vg_freelike(p) ((void)(p))
#endif

/* Open: pyarena (or the user, for an object) may touch [p, p+n). */
static inline void pyarena_mem_open(uintptr_t p, size_t n)
{
    pyarena_asan_open(p, n);
    pyarena_vg_open(p, n);
}

/* Close: any touch of [p, p+n) is a report. */
static inline void pyarena_mem_close(uintptr_t p, size_t n)
{
    pyarena_asan_close(p, n);
    pyarena_vg_close(p, n);
}

/* The object at p, n bytes, handed out (zeroed: its bytes are defined). */
static inline void pyarena_mem_malloclike(uintptr_t p, size_t n, int zeroed)
{
    pyarena_vg_malloclike(p, n, zeroed);
}

/* The object at p freed (before its slot is opened for the freed pattern). */
static inline void pyarena_mem_freelike(uintptr_t p)
{
    pyarena_vg_freelike(p);
}

/* Tests only (_testing.poke/peek): touch [p, p+n) the way a wild write the
   sanitizers did not see would, keeping each byte's state for ASAN. */
static inline void pyarena_mem_raw(uintptr_t p, size_t n, const void *src, void *dst)
{
    size_t i;
    for (i = 0; i < n; i++) {
#if PYARENA_ASAN
        int closed = __asan_address_is_poisoned((void *)(p + i));
        if (closed)
            ASAN_UNPOISON_MEMORY_REGION((void *)(p + i), 1);
#endif
        if (src)
            ((volatile unsigned char *)p)[i] = ((const unsigned char *)src)[i];
        else
            ((unsigned char *)dst)[i] = ((volatile unsigned char *)p)[i];
#if PYARENA_ASAN
        if (closed)
            ASAN_POISON_MEMORY_REGION((void *)(p + i), 1);
#endif
    }
}

static inline int pyarena_sanitizer_flags(void)
{
    return (PYARENA_ASAN ? 1 : 0) | (PYARENA_VALGRIND ? 2 : 0);
}

#endif /* PYARENA_SANITIZE_H */
