/* blas.c: one sgemm of the public API, for benchmarks to measure the machine's own rate against:
 * OpenBLAS at the core's thread count (eapig_set_num_threads), as a user's own program calls it. */
#include <cblas.h>

#include "internal.h"

void openblas_set_num_threads(int n);

int eapig_sgemm(int32_t M, int32_t N, int32_t K, const float *A, const float *B, float *C) {
    if (M < 1 || N < 1 || K < 1)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_sgemm: sizes M %d, N %d, K %d must be positive", M, N, K);
    if (!A || !B || !C) return eapig_set_error(EAPIG_ERR_ARG, "eapig_sgemm: A, B and C are required");
    /* OpenBLAS's own threads, as many as the core uses, then back to one: the core splits its own work */
    openblas_set_num_threads(eapig_get_num_threads());
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, A, K, B, N, 0.0f, C, N);
    openblas_set_num_threads(1);
    return EAPIG_OK;
}
