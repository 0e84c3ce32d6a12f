// fuzz/safetensors.cpp: libFuzzer target for io::safetensors_file, the model file's container: the
// header length, the JSON header, __metadata__ and the tensor table, then every tensor read back as
// the loader and `eigenformer info` would (read<float>, read<double>, raw).
//
// Beyond "no crash, no other exception, short one-line messages" (harness.hpp), a file that is
// accepted must keep what the reader promises: each tensor's bytes are its shape times its dtype,
// the tensors tile the data section exactly, lookups find every tensor, reads return that many values.
#include <cstdint>
#include <cstring>
#include <limits>

#include <eigenformer/io/safetensors.hpp>

#include "harness.hpp"

namespace ef = eigenformer;
using ef::fuzz::require;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static ef::fuzz::scratch_file scratch("input.safetensors");
  const auto& path = scratch.write(data, size);
  try {
    const ef::io::safetensors_file file(path);
    std::uint64_t header_bytes = 0;
    std::memcpy(&header_bytes, data, 8);  // accepted: the file has its 8 bytes
    std::uint64_t tensor_bytes = 0;
    for (const auto& t : file.tensors()) {
      require(file.find(t.name) == &t, "find() returns every listed tensor");
      require(t.shape.size() <= ef::io::safetensors_file::max_rank, "rank within max_rank");
      require(t.begin <= t.end, "data_offsets ordered");
      const ef::index_t n = t.numel();
      require(n >= 0 && n != std::numeric_limits<ef::index_t>::max(), "an accepted shape's element count fits");
      require(static_cast<std::uint64_t>(n) * static_cast<std::uint64_t>(ef::io::dtype_bits(t.type)) ==
                  (t.end - t.begin) * 8,
              "byte range = element count x dtype bits");
      tensor_bytes += t.end - t.begin;
    }
    require(8 + header_bytes + tensor_bytes == size, "the tensors tile the data section");

    for (const auto& t : file.tensors()) {
      try {
        require(file.raw(t.name).size() == t.end - t.begin, "raw() returns the tensor's bytes");
        const auto f = file.read<float>(t.name);
        require(ef::io::is_float_dtype(t.type), "read() converts float dtypes only");
        require(f.size() == (t.shape.empty() ? 1 : t.numel()), "read<float>() returns every element");
        const auto d = file.read<double>(t.name);
        require(d.size() == f.size(), "read<double>() returns every element");
      } catch (const ef::error& e) {  // an integer dtype, rank above 4, a shape too large to index
        ef::fuzz::check_message(e);
      }
    }
  } catch (const ef::error& e) {
    ef::fuzz::check_message(e);
  }
  return 0;
}
