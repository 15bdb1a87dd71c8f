// HGQ: softmax from two exported lookup tables (HSoftmax), bit-exact with the Keras layer.
//
// For each slice of n_slice elements (the last axis):
//   m    = max(x)                        exact comparisons
//   d_j  = diff_t(m - x_j)               the exp table's input format, with its rounding and saturation
//   e_j  = exp_table[bits(d_j)]          exp_table[c] = quantized exp(-c * 2**-f_d), exported from Keras
//   s    = sum_j e_j                     exact (sum_accum_t has room for n_slice entries)
//   r    = inv_table[bits(sum_t(s))]     inv_table[c] = quantized 2**f_s / c, exported from Keras
//   y_j  = out_t(e_j * r)                the output format, with its rounding and saturation
// No table is computed in C++: both come from the trained layer, so nothing depends on std::exp.

#ifndef HGQ_SOFTMAX_H_
#define HGQ_SOFTMAX_H_

#include "ap_fixed.h"
#include "hgq_lut.h"
#include "hls_stream.h"
#include "nnet_common.h"

namespace hgq {

struct softmax_config {
    static const unsigned n_in = 1;    // elements per sample
    static const unsigned n_slice = 1; // elements per softmax (last axis)
    static const unsigned exp_table_size = 1;
    static const unsigned inv_table_size = 1;
    typedef ap_ufixed<1, 1> diff_t;        // format of max - x (exp table input)
    typedef ap_ufixed<1, 1> exp_table_t;   // exp table entries
    typedef ap_ufixed<1, 1> sum_accum_t;   // exact sum of n_slice exp entries
    typedef ap_ufixed<1, 1> sum_t;         // format of the sum (reciprocal table input)
    typedef ap_ufixed<1, 1> inv_table_t;   // reciprocal table entries
    typedef ap_ufixed<1, 1> out_t;         // output format
};

template <class data_T, class res_T, typename CONFIG_T>
void softmax_slice(const data_T x[CONFIG_T::n_slice], res_T y[CONFIG_T::n_slice],
                   const typename CONFIG_T::exp_table_t exp_table[CONFIG_T::exp_table_size],
                   const typename CONFIG_T::inv_table_t inv_table[CONFIG_T::inv_table_size]) {
    #pragma HLS INLINE
    data_T m = x[0];
    for (unsigned j = 1; j < CONFIG_T::n_slice; j++) {
        #pragma HLS UNROLL
        if (x[j] > m)
            m = x[j];
    }
    typename CONFIG_T::exp_table_t e[CONFIG_T::n_slice];
    #pragma HLS ARRAY_PARTITION variable = e complete
    typename CONFIG_T::sum_accum_t s = 0;
    for (unsigned j = 0; j < CONFIG_T::n_slice; j++) {
        #pragma HLS UNROLL
        typename CONFIG_T::diff_t d = m - x[j];
        e[j] = exp_table[table_index<typename CONFIG_T::diff_t, CONFIG_T::exp_table_size>(d)];
        s += e[j];
    }
    typename CONFIG_T::sum_t sq = s;
    typename CONFIG_T::inv_table_t r = inv_table[table_index<typename CONFIG_T::sum_t, CONFIG_T::inv_table_size>(sq)];
    for (unsigned j = 0; j < CONFIG_T::n_slice; j++) {
        #pragma HLS UNROLL
        typename CONFIG_T::out_t out = e[j] * r;
        y[j] = out;
    }
}

template <class data_T, class res_T, typename CONFIG_T>
void softmax(data_T data[CONFIG_T::n_in], res_T res[CONFIG_T::n_in],
             const typename CONFIG_T::exp_table_t exp_table[CONFIG_T::exp_table_size],
             const typename CONFIG_T::inv_table_t inv_table[CONFIG_T::inv_table_size]) {
    #pragma HLS INLINE
    #pragma HLS function_instantiate variable = exp_table, inv_table
    #pragma HLS ARRAY_PARTITION variable = exp_table complete
    #pragma HLS ARRAY_PARTITION variable = inv_table complete
    for (unsigned i = 0; i < CONFIG_T::n_in / CONFIG_T::n_slice; i++) {
        #pragma HLS UNROLL
        softmax_slice<data_T, res_T, CONFIG_T>(&data[i * CONFIG_T::n_slice], &res[i * CONFIG_T::n_slice], exp_table,
                                               inv_table);
    }
}

// io_stream: one pack (one slice) per clock cycle.
template <class data_T, class res_T, typename CONFIG_T>
void softmax(hls::stream<data_T> &data, hls::stream<res_T> &res,
             const typename CONFIG_T::exp_table_t exp_table[CONFIG_T::exp_table_size],
             const typename CONFIG_T::inv_table_t inv_table[CONFIG_T::inv_table_size]) {
    #pragma HLS function_instantiate variable = exp_table, inv_table
    #pragma HLS ARRAY_PARTITION variable = exp_table complete
    #pragma HLS ARRAY_PARTITION variable = inv_table complete
    static_assert(data_T::size == CONFIG_T::n_slice, "hgq::softmax on a stream needs one slice per pack");
SoftmaxPackLoop:
    for (unsigned p = 0; p < CONFIG_T::n_in / CONFIG_T::n_slice; p++) {
        #pragma HLS PIPELINE II = 1
        data_T in_pack = data.read();
        typename data_T::value_type x[CONFIG_T::n_slice];
        typename res_T::value_type y[CONFIG_T::n_slice];
        #pragma HLS ARRAY_PARTITION variable = x complete
        #pragma HLS ARRAY_PARTITION variable = y complete
        for (unsigned j = 0; j < CONFIG_T::n_slice; j++) {
            #pragma HLS UNROLL
            x[j] = in_pack[j];
        }
        softmax_slice<typename data_T::value_type, typename res_T::value_type, CONFIG_T>(x, y, exp_table, inv_table);
        res_T out_pack;
        PRAGMA_DATA_PACK(out_pack)
        for (unsigned j = 0; j < CONFIG_T::n_slice; j++) {
            #pragma HLS UNROLL
            out_pack[j] = y[j];
        }
        res.write(out_pack);
    }
}

} // namespace hgq

#endif
