// eigenformer/error.hpp: the exception hierarchy and the one shape-formatting helper.
//
// Every error the library raises is an eigenformer::error. Messages follow
//   "<where>: <what>, expected <X>, got <Y>"
// where <where> names the tensor, config key, option, file or line at fault, so that a user can act
// on the message alone (as nlohmann/json's exceptions carry their context).
#pragma once

#include <cstddef>
#include <initializer_list>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>

#include "types.hpp"

namespace eigenformer {

/// Base of every exception thrown by eigenformer.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A file (safetensors, npy, token text) is malformed or does not match the model.
class format_error : public error {
 public:
  using error::error;
};

/// Two shapes that must agree do not.
class shape_error : public error {
 public:
  using error::error;
};

/// A model configuration key is missing, of the wrong type or out of range.
class config_error : public error {
 public:
  using error::error;
};

/// A caller-supplied argument or option is out of range (a token id, a sampler parameter...).
class invalid_argument : public error {
 public:
  using error::error;
};

/// "[2, 3, 4]"
inline std::string shape_string(std::span<const index_t> dims) {
  std::string s = "[";
  for (std::size_t i = 0; i < dims.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(dims[i]);
  }
  return s + "]";
}

inline std::string shape_string(std::initializer_list<index_t> dims) {
  return shape_string(std::span<const index_t>(dims.begin(), dims.size()));
}

/// Throws shape_error "<what>: shape <got>, expected <expected>" unless the two agree.
inline void check_shape(std::string_view what, std::span<const index_t> got,
                        std::span<const index_t> expected) {
  bool same = got.size() == expected.size();
  for (std::size_t i = 0; same && i < got.size(); ++i) same = got[i] == expected[i];
  if (!same) {
    throw shape_error(std::string(what) + ": shape " + shape_string(got) + ", expected " +
                      shape_string(expected));
  }
}

inline void check_shape(std::string_view what, std::initializer_list<index_t> got,
                        std::initializer_list<index_t> expected) {
  check_shape(what, std::span<const index_t>(got.begin(), got.size()),
              std::span<const index_t>(expected.begin(), expected.size()));
}

}  // namespace eigenformer
