/* Atomics and locks for pyarena's allocator (see _types.pxd, "Locking").
 *
 * The fast paths share no state between threads except a span's freeBits,
 * nfreed and incache (a thread frees a slot in a span another thread's
 * cache allocates from), tiny reference counts, and statistics counters.
 * Those use the GCC/Clang __atomic builtins below. Central lists and the
 * page heap are guarded by mutexes, taken in the order central, then heap;
 * the registry of live heaps (_mcache.pyx) is taken before either, never
 * inside one.
 */
#ifndef PYARENA_ATOMIC_H
#define PYARENA_ATOMIC_H
#include <stdint.h>
#include <pthread.h>

static inline uint64_t pa_or64(uint64_t *p, uint64_t v)
{ return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
static inline uint64_t pa_xchg64(uint64_t *p, uint64_t v)
{ return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
static inline uint64_t pa_load64(const uint64_t *p)
{ return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void pa_store64(uint64_t *p, uint64_t v)
{ __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void pa_store64_relaxed(uint64_t *p, uint64_t v)
{ __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline void pa_add64(uint64_t *p, uint64_t v)
{ __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
static inline int32_t pa_add32(int32_t *p, int32_t v)
{ return __atomic_add_fetch(p, v, __ATOMIC_SEQ_CST); }
static inline int32_t pa_load32(const int32_t *p)
{ return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static inline uint8_t pa_load8(const uint8_t *p)
{ return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static inline void pa_store8(uint8_t *p, uint8_t v)
{ __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
static inline uint8_t pa_addu8(uint8_t *p, int v)
{ return (uint8_t)__atomic_add_fetch(p, (uint8_t)v, __ATOMIC_ACQ_REL); }
static inline uint16_t pa_load16(const uint16_t *p)
{ return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void pa_store16(uint16_t *p, uint16_t v)
{ __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void *pa_loadptr(void *const *p)
{ return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void pa_storeptr(void **p, void *v)
{ __atomic_store_n(p, v, __ATOMIC_RELEASE); }

typedef pthread_mutex_t pa_mutex;
static inline void pa_mutex_init(pa_mutex *m) { pthread_mutex_init(m, NULL); }
static inline void pa_lock(pa_mutex *m) { pthread_mutex_lock(m); }
static inline void pa_unlock(pa_mutex *m) { pthread_mutex_unlock(m); }

#endif
