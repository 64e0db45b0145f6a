/* buffer.c: float buffers the Lua side owns and frees at a known point (STYLE 12): the big
 * per-batch node buffers, freed when their batch ends rather than when the collector runs. */
#include <stdlib.h>

#include "internal.h"

float *eapig_floats_new(int64_t n) {
    if (n < 0 || (uint64_t)n > SIZE_MAX / sizeof(float)) {
        eapig_set_error(EAPIG_ERR_ARG, "eapig_floats_new: bad size %lld", (long long)n);
        return NULL;
    }
    float *p = calloc(n > 0 ? (size_t)n : 1, sizeof(float));
    if (!p) eapig_set_error(EAPIG_ERR_NOMEM, "eapig_floats_new: out of memory for %lld floats", (long long)n);
    return p;
}

void eapig_floats_free(float *p) { free(p); }
