// eigenformer/weights.hpp: weight_map<Scalar>, named tensors on their way from a file into a model.
//
// The loader fills a weight_map with every tensor of the file; each layer's constructor take()s its
// own tensors by full name ("transformer.decoder.layers.3.norm1.weight") with the shape it expects.
// What is missing, shaped otherwise, or left over once the model is built is an error naming the
// tensor and the file, so a model can never run on a partially matching checkpoint.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <type_traits>
#include <string>
#include <utility>
#include <vector>

#include "detail/file.hpp"
#include "error.hpp"
#include "tensor.hpp"

namespace eigenformer {

namespace detail {

/// The index of the first NaN or infinity in `values`, or -1 if all are finite. One pass over the bits
/// (so -ffast-math cannot fold it away), branch-free within blocks so that it vectorizes.
template <class Scalar>
std::ptrdiff_t first_non_finite(std::span<const Scalar> values) noexcept {
  static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>);
  using bits_t = std::conditional_t<std::is_same_v<Scalar, float>, std::uint32_t, std::uint64_t>;
  constexpr bits_t exponent = static_cast<bits_t>(std::is_same_v<Scalar, float> ? 0x7F800000u : 0x7FF0000000000000u);
  constexpr std::size_t block = 4096;
  const Scalar* p = values.data();
  for (std::size_t first = 0; first < values.size(); first += block) {
    const std::size_t n = std::min(block, values.size() - first);
    bits_t any = 0;
    for (std::size_t i = 0; i < n; ++i) any |= static_cast<bits_t>((std::bit_cast<bits_t>(p[first + i]) & exponent) == exponent);
    if (!any) continue;
    for (std::size_t i = 0; i < n; ++i) {
      if ((std::bit_cast<bits_t>(p[first + i]) & exponent) == exponent) return static_cast<std::ptrdiff_t>(first + i);
    }
  }
  return -1;
}

/// "NaN", "+Inf" or "-Inf" for a non-finite value (by its bits, as first_non_finite).
template <class Scalar>
const char* non_finite_name(Scalar v) noexcept {
  using bits_t = std::conditional_t<std::is_same_v<Scalar, float>, std::uint32_t, std::uint64_t>;
  constexpr bits_t magnitude = static_cast<bits_t>(std::is_same_v<Scalar, float> ? 0x7FFFFFFFu : 0x7FFFFFFFFFFFFFFFu);
  constexpr bits_t infinity = static_cast<bits_t>(std::is_same_v<Scalar, float> ? 0x7F800000u : 0x7FF0000000000000u);
  const auto b = std::bit_cast<bits_t>(v);
  if ((b & magnitude) != infinity) return "NaN";
  return b == infinity ? "+Inf" : "-Inf";
}

}  // namespace detail

template <class Scalar>
class weight_map {
 public:
  /// `source` names where the tensors come from (a file path) in error messages.
  explicit weight_map(std::string source = "weights") : source_(std::move(source)) {}

  const std::string& source() const noexcept { return source_; }

  void insert(std::string name, tensor<Scalar> t) { tensors_.insert_or_assign(std::move(name), std::move(t)); }

  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }

  /// The tensor `name` not taken yet, or nullptr.
  const tensor<Scalar>* find(const std::string& name) const {
    const auto it = tensors_.find(name);
    return it == tensors_.end() ? nullptr : &it->second;
  }

  /// Removes and returns `name`; throws format_error if absent, shape_error if not `expected`.
  tensor<Scalar> take(const std::string& name, const tensor_shape& expected) {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) throw format_error(source_ + ": tensor '" + name + "' is missing");
    if (!(it->second.shape() == expected)) {
      throw shape_error(source_ + ": tensor '" + name + "': shape " + it->second.shape().str() + ", expected " +
                        expected.str());
    }
    tensor<Scalar> t = std::move(it->second);
    tensors_.erase(it);
    return t;
  }

  /// take() if present, else an empty tensor (optional tensors such as generator.bias).
  tensor<Scalar> take_optional(const std::string& name, const tensor_shape& expected) {
    return contains(name) ? take(name, expected) : tensor<Scalar>();
  }

  /// Names not taken yet.
  std::vector<std::string> remaining() const {
    std::vector<std::string> names;
    for (const auto& [name, t] : tensors_) names.push_back(name);
    return names;
  }

  /// Throws format_error naming the first tensor nobody took ("unexpected tensor").
  void expect_empty() const {
    if (!tensors_.empty()) {
      // The name comes from the file: quoted briefly and on one line, as the readers quote it.
      throw format_error(source_ + ": unexpected tensor '" + detail::text_excerpt(tensors_.begin()->first, 128) + "' (" +
                         std::to_string(tensors_.size()) + " tensor(s) not used by this configuration)");
    }
  }

 private:
  std::string source_;
  std::map<std::string, tensor<Scalar>> tensors_;
};

}  // namespace eigenformer
