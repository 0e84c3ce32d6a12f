// eigenformer/error.hpp: the exception hierarchy and the one shape-formatting helper.
//
// Every error the library raises is an eigenformer::error. Messages follow
//   "<where>: <what>, expected <X>, got <Y>"
// where <where> names the tensor, config key, option, file or line at fault, so that a user can act
// on the message alone (as nlohmann/json's exceptions carry their context).
#pragma once

#include <cstddef>
#include <initializer_list>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

#include "types.hpp"

namespace eigenformer {

/// Base of every exception thrown by eigenformer.
///
/// An error may carry its subject, the option, tensor, key or file it names, as a field, so that a
/// caller can act on it without parsing the message: error("top_p", "1.5, expected a value in (0, 1]")
/// has what() "top_p: 1.5, expected a value in (0, 1]" and subject() "top_p". Errors built from a
/// message alone have an empty subject(). Copying never throws (the subject is shared).
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;

  /// what() is subject + ": " + detail.
  error(std::string subject, std::string_view detail)
      : std::runtime_error(compose(subject, detail)),
        subject_(std::make_shared<const std::string>(std::move(subject))) {}

  /// What the error names ("top_p", a tensor's name, a file), or empty when constructed from a
  /// message alone.
  const std::string& subject() const noexcept {
    static const std::string none;
    return subject_ ? *subject_ : none;
  }
  /// What is wrong with the subject: what() after "<subject>: " (all of what() without a subject).
  std::string_view detail() const noexcept {
    const std::string_view all = what();
    return subject_ ? all.substr(subject_->size() + 2) : all;
  }

 private:
  static std::string compose(const std::string& subject, std::string_view detail) {
    std::string s;
    s.reserve(subject.size() + 2 + detail.size());
    s += subject;
    s += ": ";
    s += detail;
    return s;
  }

  std::shared_ptr<const std::string> subject_;
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

/// Numbers went wrong at run time: a row of logits became NaN or infinite (a model with a NaN
/// weight, extreme inputs). sequence() is the index of the source in the call's batch and step() the
/// tokens generated before it, so that a caller can point at its own input (the tool names the file
/// and line).
class numeric_error : public error {
 public:
  numeric_error(std::string subject, std::string_view detail, index_t sequence, index_t step)
      : error(std::move(subject), detail), sequence_(sequence), step_(step) {}
  index_t sequence() const noexcept { return sequence_; }
  index_t step() const noexcept { return step_; }

 private:
  index_t sequence_ = 0, step_ = 0;
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
