/* internal.h: declarations shared by the core's files, not part of the public API. */
#ifndef EAPIG_INTERNAL_H
#define EAPIG_INTERNAL_H
#include <stddef.h>
#include <stdint.h>

#include "eapig.h"

/* Sets the thread-local message and returns status, so callers can `return eapig_set_error(...)`. */
int eapig_set_error(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Checked size arithmetic: returns 0 and sets an error on overflow. */
static inline int eapig_mul_ok(size_t a, size_t b, size_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}

struct eapig_model {
    eapig_config cfg;
    eapig_weights w;
    eapig_layer_weights *layers; /* (L), owned */
    float *arena;                /* every weight tensor, one allocation */
    size_t arena_floats;
    int finalized;
};

#endif
