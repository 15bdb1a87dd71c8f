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
// and rounding/overflow logic; per-element formats select the pack's formats with a switch on p.

#ifndef HGQ_QUANTIZER_STREAM_H_
#define HGQ_QUANTIZER_STREAM_H_

#include "ap_fixed.h"
#include "hls_stream.h"
#include "nnet_common.h"

namespace hgq {

struct quantizer_stream_config {
    static const unsigned n_packs = 1;   // packs per sample
    static const unsigned pack_size = 1; // elements per pack
};

// Read one pack per clock cycle, quantize every element of it in parallel, write the quantized pack.
template <class data_T, class res_T, typename CONFIG_T>
void quantize_stream(hls::stream<data_T> &data, hls::stream<res_T> &res) {
QuantizePackLoop:
    for (unsigned p = 0; p < CONFIG_T::n_packs; p++) {
        #pragma HLS PIPELINE II = 1

        data_T in_pack = data.read();
        res_T out_pack;
        PRAGMA_DATA_PACK(out_pack)

        CONFIG_T::template quantize<data_T, res_T>(in_pack, out_pack, p);

        res.write(out_pack);
    }
}

} // namespace hgq

#endif
