// fuzz/npy.cpp: libFuzzer target for the .npy reader (io/npy.hpp): the magic, version and header
// length, the Python-literal header dict, the dtype and shape checks, and the element conversions of
// read_npy<float>, read_npy<double> and read_npy_ints (the tool reads logits and token arrays so).
//
// The public readers take a path, so each input goes to one scratch file (harness.hpp). An accepted
// header must account for every byte of the file, and the readers must return numel values.
#include <cstdint>
#include <span>
#include <vector>

#include <eigenformer/io/npy.hpp>

#include "harness.hpp"

namespace ef = eigenformer;
using ef::fuzz::require;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static ef::fuzz::scratch_file scratch("array.npy");
  const auto& path = scratch.write(data, size);
  ef::io::npy_header h;
  try {
    h = ef::io::read_npy_header(path);
  } catch (const ef::error& e) {
    ef::fuzz::check_message(e);
    return 0;
  }
  require(h.numel >= 0 && h.item_size > 0, "a valid header has a size");
  require(h.data_offset + static_cast<std::uint64_t>(h.numel) * h.item_size == size,
          "header + numel x item size = the file");
  // Each reader accepts some dtypes and refuses the others; whichever it accepts, it returns every element.
  try {
    const auto f = ef::io::read_npy<float>(path);
    require(h.kind == 'f' && f.size() == h.numel, "read_npy<float>() returns every element");
    const auto d = ef::io::read_npy<double>(path);
    require(d.size() == h.numel, "read_npy<double>() returns every element");
  } catch (const ef::error& e) {
    ef::fuzz::check_message(e);
  }
  try {
    std::vector<ef::index_t> shape;
    const auto ints = ef::io::read_npy_ints(path, &shape);
    require(h.kind != 'f' && ints.size() == static_cast<std::size_t>(h.numel) && shape == h.shape,
            "read_npy_ints() returns every element and the shape");
  } catch (const ef::error& e) {
    ef::fuzz::check_message(e);
  }
  return 0;
}
