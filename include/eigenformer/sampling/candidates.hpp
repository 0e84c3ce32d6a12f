// eigenformer/sampling/candidates.hpp: the array every sampler works on.
//
// A `candidates` object is one decode step's view of the vocabulary: an array of (id, logit, p)
// over a buffer allocated once for V tokens, of which the first size() are still kept. Samplers
// filter it in place (moving the kept tokens to the front and shrinking size()), change logits,
// or select the final token. Two flags let filters compose without redoing work:
//
//   sorted()      the kept candidates are in descending logit order; when it was set, equal
//                 logits were ordered by lower token id (top-k sets it; top-p then walks a prefix)
//   normalized()  p holds the softmax of the kept logits (sums to 1); anything that changes a
//                 logit clears it, and truncation rescales p so that it stays true
//
// Token ids: fill() stores token i at position i ("vocabulary order"), which penalties use to find
// a token in O(1) while nothing has reordered the array.
//
// Logits: -inf is a legal logit (the token is never drawn; its p is exactly 0). NaN and +inf are
// rejected by fill() with an invalid_argument naming the token. If every kept logit is -inf, the
// softmax (and greedy) throw invalid_argument.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "../error.hpp"
#include "../types.hpp"

namespace eigenformer::sampling {

/// One token of the vocabulary during a decode step.
struct candidate {
  token_id id;
  float logit;
  float p;  ///< probability; meaningful only while candidates::normalized()
};

/// The order samplers agree on: higher logit first, equal logits by lower token id. A strict
/// total order (ids are unique), so partial selections are deterministic.
struct ranks_before {
  bool operator()(const candidate& a, const candidate& b) const noexcept {
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
  }
};

namespace detail {

/// The largest logit (or p) of [first, last), -inf when empty. Four independent maxima, so the
/// loop is not one long dependency chain.
template <float candidate::*Field>
float max_of(const candidate* first, const candidate* last) noexcept {
  float m0 = -std::numeric_limits<float>::infinity(), m1 = m0, m2 = m0, m3 = m0;
  for (; last - first >= 4; first += 4) {
    m0 = first[0].*Field > m0 ? first[0].*Field : m0;
    m1 = first[1].*Field > m1 ? first[1].*Field : m1;
    m2 = first[2].*Field > m2 ? first[2].*Field : m2;
    m3 = first[3].*Field > m3 ? first[3].*Field : m3;
  }
  for (; first != last; ++first) m0 = (*first).*Field > m0 ? (*first).*Field : m0;
  m0 = m1 > m0 ? m1 : m0;
  m2 = m3 > m2 ? m3 : m2;
  return m2 > m0 ? m2 : m0;
}

inline float max_logit(const candidate* first, const candidate* last) noexcept {
  return max_of<&candidate::logit>(first, last);
}

/// The sum of p over [first, last) in double, in a fixed order: four lanes (i mod 4) summed
/// separately, then (lane0 + lane1) + (lane2 + lane3).
inline double sum_p(const candidate* first, const candidate* last) noexcept {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  for (; last - first >= 4; first += 4) {
    s0 += first[0].p;
    s1 += first[1].p;
    s2 += first[2].p;
    s3 += first[3].p;
  }
  if (first != last) s0 += first[0].p;
  if (last - first > 1) s1 += first[1].p;
  if (last - first > 2) s2 += first[2].p;
  return (s0 + s1) + (s2 + s3);
}

}  // namespace detail

class candidates {
 public:
  /// Views `storage`, a buffer the caller owns and keeps alive (capacity = storage.size()).
  explicit candidates(std::span<candidate> storage) : data_(storage) {}

  /// Owns a buffer for up to `capacity` tokens (allocated here, once).
  explicit candidates(index_t capacity) {
    if (capacity < 0) {
      throw invalid_argument("candidates: capacity " + std::to_string(capacity) + ", expected >= 0");
    }
    owned_.resize(static_cast<std::size_t>(capacity));
    data_ = owned_;
  }

  // Moving keeps the owned buffer's address, so data_ stays valid; copying would not.
  candidates(candidates&&) noexcept = default;
  candidates& operator=(candidates&&) noexcept = default;
  candidates(const candidates&) = delete;
  candidates& operator=(const candidates&) = delete;

  /// Resets to the whole vocabulary: token i gets logits[i]; flags and selection cleared.
  /// Throws invalid_argument naming the token on a NaN or +inf logit, and on an empty span or one
  /// longer than capacity(). No allocation.
  void fill(std::span<const float> logits) { fill_impl(logits); }

  /// The same from double logits, rounded to float (a value beyond float's range is an error).
  void fill(std::span<const double> logits) { fill_impl(logits); }

  index_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  /// Length of the logits of the last fill(): the vocabulary size V.
  index_t vocab_size() const noexcept { return vocab_size_; }
  index_t capacity() const noexcept { return static_cast<index_t>(data_.size()); }

  /// The kept candidates, [0, size()).
  std::span<candidate> view() noexcept { return data_.first(static_cast<std::size_t>(size_)); }
  std::span<const candidate> view() const noexcept { return data_.first(static_cast<std::size_t>(size_)); }
  candidate* begin() noexcept { return data_.data(); }
  candidate* end() noexcept { return data_.data() + size_; }
  const candidate* begin() const noexcept { return data_.data(); }
  const candidate* end() const noexcept { return data_.data() + size_; }
  candidate& operator[](index_t i) noexcept { return data_[static_cast<std::size_t>(i)]; }
  const candidate& operator[](index_t i) const noexcept { return data_[static_cast<std::size_t>(i)]; }

  bool sorted() const noexcept { return sorted_; }
  void set_sorted(bool s) noexcept { sorted_ = s; }
  bool normalized() const noexcept { return normalized_; }
  void set_normalized(bool n) noexcept { normalized_ = n; }

  /// Call after changing logits in place without reordering in a way that may break the order
  /// (penalties, biases, a user's edits): clears sorted() and normalized().
  void logits_changed() noexcept {
    sorted_ = false;
    normalized_ = false;
  }

  /// Keeps the first n candidates (0 <= n <= size()). If normalized(), rescales the kept p so that
  /// they sum to 1 again (O(n)); sorted() is unchanged.
  void truncate(index_t n) {
    if (n < 0 || n > size_) {
      throw invalid_argument("candidates::truncate: " + std::to_string(n) + ", expected a value in [0, " +
                             std::to_string(size_) + "]");
    }
    size_ = n;
    if (normalized_) rescale();
  }

  /// Keeps the candidates for which keep(const candidate&) is true, in their current order (so
  /// sorted() stays true if it was), then truncates as above. One pass, no allocation; the
  /// removed candidates are overwritten.
  template <class Pred>
  void keep_if(Pred keep) {
    candidate* c = data_.data();
    index_t kept = 0;
    for (index_t i = 0; i < size_; ++i) {
      if (keep(static_cast<const candidate&>(c[i]))) c[kept++] = c[i];
    }
    truncate(kept);
  }

  /// Softmax of the kept logits into p (max subtracted first; -inf gets exactly 0). Sets
  /// normalized(). Throws invalid_argument when the set is empty or every logit is -inf.
  void softmax();

  /// softmax() unless normalized() already holds.
  void ensure_normalized() {
    if (!normalized_) softmax();
  }

  /// Index in [0, size()) of the highest kept logit, ties to the lower id (O(1) when sorted()).
  /// Throws invalid_argument when the set is empty or every logit is -inf.
  index_t argmax() const;

  /// The token chosen by a selecting stage (greedy, distribution), if any.
  std::optional<token_id> selected() const noexcept { return selected_; }
  void select(token_id id) noexcept { selected_ = id; }
  void clear_selection() noexcept { selected_.reset(); }

 private:
  template <class Scalar>
  void fill_impl(std::span<const Scalar> logits);
  void rescale();
  [[noreturn]] void throw_all_minus_inf(const char* where) const {
    throw invalid_argument(std::string(where) + ": every candidate's logit is -inf (" + std::to_string(size_) +
                           " candidates), expected at least one finite logit");
  }

  std::vector<candidate> owned_;
  std::span<candidate> data_;
  index_t size_ = 0;
  index_t vocab_size_ = 0;
  bool sorted_ = false;
  bool normalized_ = false;
  std::optional<token_id> selected_;
};

template <class Scalar>
void candidates::fill_impl(std::span<const Scalar> logits) {
  const auto n = static_cast<index_t>(logits.size());
  if (n == 0) throw invalid_argument("logits", "shape [0], expected at least one token");
  if (n > capacity()) {
    throw invalid_argument("logits", "shape " + shape_string({n}) + " exceeds the candidate buffer's capacity " +
                                         std::to_string(capacity()));
  }
  // One pass: copy and flag anything that is not "< +inf" (NaN and +inf both fail that test).
  constexpr float inf = std::numeric_limits<float>::infinity();
  bool bad = false;
  candidate* out = data_.data();
  for (index_t i = 0; i < n; ++i) {
    const float x = static_cast<float>(logits[static_cast<std::size_t>(i)]);
    out[i] = candidate{static_cast<token_id>(i), x, 0.0f};
    bad |= !(x < inf);
  }
  if (bad) {
    for (index_t i = 0; i < n; ++i) {
      const Scalar x = logits[static_cast<std::size_t>(i)];
      if (std::isnan(x)) {
        throw invalid_argument("logits", "NaN at token " + std::to_string(i) + ", expected a number");
      }
      if (!(static_cast<float>(x) < inf)) {
        throw invalid_argument("logits", std::string(x > 0 && std::isinf(x) ? "+inf" : "a value beyond float's range") +
                                             " at token " + std::to_string(i) + ", expected a finite value or -inf");
      }
    }
  }
  size_ = n;
  vocab_size_ = n;
  sorted_ = false;
  normalized_ = false;
  selected_.reset();
}

inline void candidates::rescale() {
  const double mass = detail::sum_p(begin(), end());
  if (mass > 0) {
    const auto inv = static_cast<float>(1.0 / mass);
    for (candidate& c : view()) c.p *= inv;
  } else {
    normalized_ = false;  // only -inf (or underflowed) tokens left: let the next softmax decide
  }
}

inline index_t candidates::argmax() const {
  if (size_ == 0) throw invalid_argument("candidates: empty, expected at least one candidate");
  constexpr float minus_inf = -std::numeric_limits<float>::infinity();
  if (sorted_) {
    if (data_[0].logit == minus_inf) throw_all_minus_inf("argmax");
    return 0;
  }
  // The maximum (four lanes), then the lowest id holding it: two passes without a serial chain.
  const candidate* c = data_.data();
  const float m = detail::max_logit(c, c + size_);
  if (m == minus_inf) throw_all_minus_inf("argmax");
  index_t best = -1;
  for (index_t i = 0; i < size_; ++i) {
    if (c[i].logit == m && (best < 0 || c[i].id < c[best].id)) best = i;
  }
  return best;
}

// g++ 12 reports -Wmaybe-uninitialized inside its own AVX-512 intrinsics when Eigen's exp is
// inlined under -march=native (GCC bug 105593, fixed in 13); the values are all initialised.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
inline void candidates::softmax() {
  if (size_ == 0) throw invalid_argument("softmax: no candidates left, expected at least one");
  candidate* c = data_.data();
  const index_t n = size_;
  const float m = sorted_ ? c[0].logit : detail::max_logit(c, c + n);
  constexpr float minus_inf = -std::numeric_limits<float>::infinity();
  if (m == minus_inf) throw_all_minus_inf("softmax");
  // exp through Eigen's vectorised kernel, a block at a time through a small stack buffer (the
  // candidates are interleaved, 12 bytes apart). Eigen clamps its argument at -88.7, so -inf
  // logits are set to exactly 0 afterwards.
  constexpr index_t block = 256;
  alignas(64) float buf[block];
  double sum = 0;
  for (index_t start = 0; start < n; start += block) {
    const index_t len = std::min(block, n - start);
    for (index_t i = 0; i < len; ++i) buf[i] = c[start + i].logit - m;
    Eigen::Map<Eigen::ArrayXf, Eigen::Aligned64> a(buf, len);
    a = a.exp();
    for (index_t i = 0; i < len; ++i) {
      const float e = c[start + i].logit == minus_inf ? 0.0f : buf[i];
      c[start + i].p = e;
      buf[i] = e;
    }
    sum += static_cast<double>(a.sum());
  }
  const auto inv = static_cast<float>(1.0 / sum);  // sum >= 1: the maximum contributes exp(0)
  for (index_t i = 0; i < n; ++i) c[i].p *= inv;
  normalized_ = true;
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

}  // namespace eigenformer::sampling
