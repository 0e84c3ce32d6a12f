#include <eigenformer/eigenformer.hpp>

int odr_b() {
  eigenformer::tensor<float> t({1, 3});
  return static_cast<int>(t.size());
}
