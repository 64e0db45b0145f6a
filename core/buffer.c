/* buffer.c: the big float buffers: the weight arena, and the buffers the Lua side owns and frees
 * at a known point (STYLE 12: the per-batch node buffers, freed when their batch ends rather than
 * when the collector runs).
 *
 * A big buffer is its own anonymous mapping: the kernel hands it out zeroed (no memset over
 * memory that is already zero), and freeing unmaps it, so its memory goes back to the system at
 * once instead of staying in the allocator's heap. (Transparent huge pages were measured and not
 * used: on the virtual machines here their first touch was slower and far more variable.) Small
 * buffers come from calloc. A header in front of the floats records which kind a buffer is. */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "internal.h"

enum { HEADER = 64 };                        /* keeps the floats 64-byte aligned */
static const size_t MAPPED_FROM = (size_t)1 << 21; /* bytes: below this, calloc is as good */

typedef struct {
    size_t total; /* bytes of the whole block, header included */
    int mapped;   /* 1: mmap'd, 0: calloc'd */
} header;

float *eapig_big_floats(size_t n) {
    if (n > (SIZE_MAX - HEADER) / sizeof(float)) return NULL;
    size_t total = HEADER + (n > 0 ? n : 1) * sizeof(float);
    uint8_t *base;
    int mapped = total >= MAPPED_FROM;
    if (mapped) {
        void *p = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return NULL;
        base = p;
    } else {
        base = calloc(1, total);
        if (!base) return NULL;
    }
    header h = {total, mapped};
    memcpy(base, &h, sizeof h);
    return (float *)(base + HEADER);
}

void eapig_big_floats_free(float *p) {
    if (!p) return;
    uint8_t *base = (uint8_t *)p - HEADER;
    header h;
    memcpy(&h, base, sizeof h);
    if (h.mapped) {
        munmap(base, h.total);
    } else {
        free(base);
    }
}

float *eapig_floats_new(int64_t n) {
    if (n < 0 || (uint64_t)n > SIZE_MAX / sizeof(float)) {
        eapig_set_error(EAPIG_ERR_ARG, "eapig_floats_new: bad size %lld", (long long)n);
        return NULL;
    }
    float *p = eapig_big_floats((size_t)n);
    if (!p) eapig_set_error(EAPIG_ERR_NOMEM, "eapig_floats_new: out of memory for %lld floats", (long long)n);
    return p;
}

void eapig_floats_free(float *p) { eapig_big_floats_free(p); }
