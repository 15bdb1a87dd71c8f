// HGQ: element-wise lookup tables (HActivation with any function but relu).
//
// The table is exported from the trained Keras layer: entry c is the quantized function value at the input
// whose two's-complement bit pattern, in the table's input format `table_in_t`, is c. Every input is first
// cast to `table_in_t`; the value is already representable there (it left the layer's input quantizer, whose
// format is table_in_t or, after hls4ml's bit-exact narrowing, a subset of it), so the cast only re-encodes it.
// A table of size 1 (input pruned to zero width) is read at index 0.

#ifndef HGQ_LUT_H_
#define HGQ_LUT_H_

#include "ap_fixed.h"
#include "hls_stream.h"
#include "nnet_common.h"

namespace hgq {

struct lut_config {
    static const unsigned n_in = 1;       // elements per sample
    static const unsigned table_size = 1; // 2**width(table_in_t), or 1
    typedef ap_ufixed<1, 1> table_in_t;   // input format the table is indexed by
    typedef ap_ufixed<1, 1> table_t;      // table entries
};

// Two's-complement bit pattern of x as a table index (0 for a one-entry table).
template <class index_T, unsigned table_size, class data_T> inline unsigned table_index(data_T x) {
    #pragma HLS INLINE
    if (table_size == 1)
        return 0;
    index_T v = x;
    return (unsigned)v.range(index_T::width - 1, 0);
}

template <class data_T, class res_T, typename CONFIG_T>
void lut(data_T data[CONFIG_T::n_in], res_T res[CONFIG_T::n_in],
         const typename CONFIG_T::table_t table[CONFIG_T::table_size]) {
    #pragma HLS INLINE
    #pragma HLS function_instantiate variable = table
    #pragma HLS ARRAY_PARTITION variable = table complete
    for (unsigned j = 0; j < CONFIG_T::n_in; j++) {
        #pragma HLS UNROLL
        res[j] = table[table_index<typename CONFIG_T::table_in_t, CONFIG_T::table_size>(data[j])];
    }
}

// io_stream: one pack (the last axis of one position) per clock cycle.
template <class data_T, class res_T, typename CONFIG_T>
void lut(hls::stream<data_T> &data, hls::stream<res_T> &res,
         const typename CONFIG_T::table_t table[CONFIG_T::table_size]) {
    #pragma HLS function_instantiate variable = table
    #pragma HLS ARRAY_PARTITION variable = table complete
LUTPackLoop:
    for (unsigned p = 0; p < CONFIG_T::n_in / data_T::size; p++) {
        #pragma HLS PIPELINE II = 1
        data_T in_pack = data.read();
        res_T out_pack;
        PRAGMA_DATA_PACK(out_pack)
        for (unsigned j = 0; j < data_T::size; j++) {
            #pragma HLS UNROLL
            out_pack[j] = table[table_index<typename CONFIG_T::table_in_t, CONFIG_T::table_size>(in_pack[j])];
        }
        res.write(out_pack);
    }
}

} // namespace hgq

#endif
