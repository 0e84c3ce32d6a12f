// eigenformer/sampling/top_k.hpp: keep the k highest logits.
//
// Exactly k tokens are kept: ties at the boundary go to the lower token id (ranks_before).
// k = 0 disables the filter; k >= size() keeps everything (and sorts nothing).
// Cost: no sort of the vocabulary. A partial selection (a k-element heap, one scan over the
// candidates, most of which fail a single compare against the worst kept logit) when k is small
// against the kept count, else std::nth_element followed by a sort of the k kept; O(1) when the candidates are already sorted(). The kept set is
// left sorted(). If normalized(), the kept p are rescaled to sum to 1.
// Throws invalid_argument at construction on k < 0.
#pragma once

#include <algorithm>
#include <memory>
#include <string>

#include "../error.hpp"
#include "candidates.hpp"
#include "sampler.hpp"

namespace eigenformer::sampling {

namespace detail {
/// Moves the k best of [first, last) (ranks_before) to [first, first + k), sorted; 0 < k < n.
/// A heap of the k best so far, its worst at the top, and one scan: most candidates fail the
/// first test against the worst kept logit, so the scan is a load and a compare per token.
inline void heap_select_sorted(candidate* first, candidate* last, index_t k) {
  candidate* middle = first + k;
  std::make_heap(first, middle, ranks_before{});
  float worst = first->logit;
  for (candidate* x = middle; x != last; ++x) {
    if (x->logit < worst) continue;  // fast path: cannot beat the worst kept
    if (ranks_before{}(*x, *first)) {
      std::pop_heap(first, middle, ranks_before{});
      *(middle - 1) = *x;
      std::push_heap(first, middle, ranks_before{});
      worst = first->logit;
    }
  }
  std::sort_heap(first, middle, ranks_before{});
}
}  // namespace detail

class top_k final : public cloneable_sampler<top_k> {
 public:
  explicit top_k(index_t k) : k_(k) {
    if (k < 0) throw invalid_argument("top_k", std::to_string(k) + ", expected k >= 0 (0 disables)");
  }

  index_t value() const noexcept { return k_; }

  void apply(candidates& c, sampling_context&) override {
    if (k_ == 0 || k_ >= c.size()) return;
    if (!c.sorted()) {
      // A heap of k survives one pass over n when k << n; past that, selection then a small sort.
      if (k_ <= c.size() / 16) {
        detail::heap_select_sorted(c.begin(), c.end(), k_);
      } else {
        std::nth_element(c.begin(), c.begin() + (k_ - 1), c.end(), ranks_before{});
        std::sort(c.begin(), c.begin() + k_, ranks_before{});
      }
      c.set_sorted(true);
    }
    c.truncate(k_);
  }

  std::string name() const override { return "top_k(" + std::to_string(k_) + ")"; }

 private:
  index_t k_;
};

}  // namespace eigenformer::sampling
