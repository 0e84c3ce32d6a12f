// eigenformer/io/finite_read.hpp: one tensor of a safetensors file, converted to Scalar and refused if
// any value is NaN or infinite: the read every model loader (our format, Hugging Face directories)
// makes of a weight.
//
// Why refuse non-finite weights: one NaN spreads through every later layer, and greedy decoding then
// picks token 0 forever with no error. The check looks at the bits of each block of converted values
// right after the block is read, while it is in cache. Measured on a Transformer-base float32 model
// (373 MB, in the page cache): at most ~15 ms, within run-to-run noise, of a 120-200 ms load; the
// same check as a separate pass over the loaded tensors took 45-75 ms.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

#include "../tensor.hpp"
#include "../weights.hpp"
#include "safetensors.hpp"

namespace eigenformer::io {

/// Tensor `name` of `file` as Scalar (float or double). Throws format_error naming the file and the
/// tensor if its dtype is not F32, F16, BF16 or F64, or a value is NaN or infinite after conversion
/// (an F64 weight beyond float's range is refused when reading as float).
template <class Scalar>
tensor<Scalar> read_finite_tensor(const safetensors_file& file, std::string_view name) {
  const tensor_info& info = file.info(name);
  const std::string where = file.path().string() + ": tensor '" + detail::text_excerpt(name, 128) + "': ";
  if (!is_float_dtype(info.type)) {
    throw format_error(where + "dtype " + std::string(dtype_name(info.type)) + ", expected F32, F16, BF16 or F64");
  }
  tensor<Scalar> t;
  file.read_into(name, t, [&](std::span<const Scalar> values, std::size_t first) {
    const std::ptrdiff_t i = detail::first_non_finite(values);
    if (i < 0) return;
    const bool narrowed = std::is_same_v<Scalar, float> && info.type == dtype::f64;
    throw format_error(where + detail::non_finite_name(values[static_cast<std::size_t>(i)]) + " at element " +
                       std::to_string(first + static_cast<std::size_t>(i)) + (narrowed ? " (as float)" : ""));
  });
  return t;
}

}  // namespace eigenformer::io
