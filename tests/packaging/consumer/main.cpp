// Uses the umbrella header the way an application does; exits non-zero if the result is wrong.
#include <eigenformer/eigenformer.hpp>

#include <cmath>
#include <cstdio>

int main() {
  eigenformer::tensor<float> x({2, 3});
  for (int i = 0; i < 6; ++i) x(i) = static_cast<float>(i);
  eigenformer::softmax_rows(x.matrix());
  const float row_sum = x(0, 0) + x(0, 1) + x(0, 2);
  std::printf("eigenformer %s: softmax row sum %.6f\n", EIGENFORMER_VERSION_STRING, row_sum);
  return std::fabs(row_sum - 1.0f) < 1e-6f ? 0 : 1;
}
