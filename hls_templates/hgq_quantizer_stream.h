// HGQ: activation quantizers for io_stream.
//
// hls4ml generates heterogeneous activation quantizers (one fixed-point format per element) for io_parallel
// only. This header quantizes a stream of packed tensors instead: the stream carries the tensor in packs of
// `pack_size` elements (the last axis: channels), `n_packs` packs per sample. The layer configuration, generated
// by hgq.convert for every quantizer, provides
//
//     static void quantize(const data_T &in, res_T &out, unsigned p)
//
// which casts element j of pack p to its own ap_fixed<B, I, RND, SAT> format (or writes 0 for a pruned element).
// With per-channel or per-tensor quantizers the formats do not depend on p and the loop body is pure wiring
// and rounding/overflow logic; per-element formats select the pack's formats with a switch on p (after a
// Flatten, the packs of a streamed tensor are its pixels, so per-element formats are common there).

#ifndef HGQ_QUANTIZER_STREAM_H_
#define HGQ_QUANTIZER_STREAM_H_

#include "ap_fixed.h"
#include "hls_stream.h"
#include "nnet_common.h"
#include "nnet_types.h"

namespace hgq {

struct quantizer_stream_config {
    static const unsigned n_packs = 1;   // packs per sample
    static const unsigned pack_size = 1; // elements per pack
};

// Read one input pack per clock cycle and quantize all of its elements in parallel. The output stream may be
// packed differently (a flattened tensor feeding a Dense layer is one pack per sample): quantized elements are
// then gathered into, or split across, output packs as nnet::repack_stream does.
template <class data_T, class res_T, typename CONFIG_T>
void quantize_stream(hls::stream<data_T> &data, hls::stream<res_T> &res) {
    typedef nnet::array<typename res_T::value_type, data_T::size> quantized_T;
    static_assert(data_T::size % res_T::size == 0 || res_T::size % data_T::size == 0,
                  "input and output pack sizes must divide one another");

    if (data_T::size >= res_T::size) {
        constexpr unsigned n_split = data_T::size / res_T::size;
    QuantizeSplitLoop:
        for (unsigned p = 0; p < CONFIG_T::n_packs; p++) {
            #pragma HLS PIPELINE

            data_T in_pack = data.read();
            quantized_T quantized;
            CONFIG_T::template quantize<data_T, quantized_T>(in_pack, quantized, p);

            for (unsigned s = 0; s < n_split; s++) {
                res_T out_pack;
                PRAGMA_DATA_PACK(out_pack)
                for (unsigned k = 0; k < res_T::size; k++) {
                    #pragma HLS UNROLL
                    out_pack[k] = quantized[s * res_T::size + k];
                }
                res.write(out_pack);
            }
        }
    } else {
        constexpr unsigned n_gather = res_T::size / data_T::size;
        res_T out_pack;
        PRAGMA_DATA_PACK(out_pack)
        unsigned n_gathered = 0;
    QuantizeGatherLoop:
        for (unsigned p = 0; p < CONFIG_T::n_packs; p++) {
            #pragma HLS PIPELINE

            data_T in_pack = data.read();
            quantized_T quantized;
            CONFIG_T::template quantize<data_T, quantized_T>(in_pack, quantized, p);

            for (unsigned k = 0; k < data_T::size; k++) {
                #pragma HLS UNROLL
                out_pack[n_gathered * data_T::size + k] = quantized[k];
            }
            if (n_gathered == n_gather - 1) {
                res.write(out_pack);
                n_gathered = 0;
            } else {
                n_gathered++;
            }
        }
    }
}

} // namespace hgq

#endif
