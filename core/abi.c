/* abi.c: struct sizes as this compiler laid them out, so a test can compare them with the
 * LuaJIT cdef generated from the same header (STYLE 10). */
#include "internal.h"

size_t eapig_abi_sizeof(int32_t which) {
    switch (which) {
    case EAPIG_ABI_CONFIG: return sizeof(eapig_config);
    case EAPIG_ABI_LAYER_WEIGHTS: return sizeof(eapig_layer_weights);
    case EAPIG_ABI_WEIGHTS: return sizeof(eapig_weights);
    case EAPIG_ABI_BATCH: return sizeof(eapig_batch);
    case EAPIG_ABI_FORWARD_OPTS: return sizeof(eapig_forward_opts);
    case EAPIG_ABI_BACKWARD_OPTS: return sizeof(eapig_backward_opts);
    default: return 0;
    }
}
