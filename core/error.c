/* error.c: the thread-local last-error message (STYLE 7) and the thread count. */
#include <stdarg.h>
#include <stdio.h>

#include "internal.h"

static _Thread_local char last_error[1024];

const char *eapig_last_error(void) { return last_error; }

int eapig_set_error(int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return status;
}

/* OpenBLAS threads the big GEMMs; the core runs no threads of its own (STYLE 9). */
void openblas_set_num_threads(int n);
int openblas_get_num_threads(void);

void eapig_set_num_threads(int n) {
    if (n >= 1) openblas_set_num_threads(n);
}

int eapig_get_num_threads(void) { return openblas_get_num_threads(); }
