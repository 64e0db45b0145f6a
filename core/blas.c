/* blas.c: the BLAS entry points of the public API: OpenBLAS's thread count, and one sgemm for
 * benchmarks to measure the machine's own rate against. */
#include <cblas.h>

#include "internal.h"

/* OpenBLAS threads the big GEMMs; the core runs no threads of its own (STYLE 9). */
void openblas_set_num_threads(int n);
int openblas_get_num_threads(void);

void eapig_set_num_threads(int n) {
    if (n >= 1) openblas_set_num_threads(n);
}

int eapig_get_num_threads(void) { return openblas_get_num_threads(); }

int eapig_sgemm(int32_t M, int32_t N, int32_t K, const float *A, const float *B, float *C) {
    if (M < 1 || N < 1 || K < 1)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_sgemm: sizes M %d, N %d, K %d must be positive", M, N, K);
    if (!A || !B || !C) return eapig_set_error(EAPIG_ERR_ARG, "eapig_sgemm: A, B and C are required");
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, A, K, B, N, 0.0f, C, N);
    return EAPIG_OK;
}
