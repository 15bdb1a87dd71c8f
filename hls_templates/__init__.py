"""HGQ's own HLS C++ headers, copied into hls4ml projects by the converter (see hgq.convert.hls_backend)."""
