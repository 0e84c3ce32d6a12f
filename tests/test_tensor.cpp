// tensor<Scalar> and tensor_shape: construction, storage, views, checked access and errors.
#include <eigenformer/tensor.hpp>

#include <cstdint>

#include "test_util.hpp"

namespace ef = eigenformer;
using ef::index_t;
using namespace ef::testing;

template <class Scalar>
class TensorTest : public ::testing::Test {};
TYPED_TEST_SUITE(TensorTest, scalar_types);

TEST(TensorShape, RanksAndCounts) {
  const ef::tensor_shape s{2, 3, 5};
  EXPECT_EQ(s.rank(), 3);
  EXPECT_EQ(s.numel(), 30);
  EXPECT_EQ(s.rows(), 6);
  EXPECT_EQ(s.cols(), 5);
  EXPECT_EQ(s.str(), "[2, 3, 5]");
  EXPECT_EQ((ef::tensor_shape{7}.rows()), 1);
  EXPECT_EQ((ef::tensor_shape{7}.cols()), 7);
  EXPECT_EQ((ef::tensor_shape{1, 2, 3, 4}.numel()), 24);
  EXPECT_TRUE((ef::tensor_shape{2, 3} == ef::tensor_shape{2, 3}));
  EXPECT_FALSE((ef::tensor_shape{2, 3} == ef::tensor_shape{3, 2}));
  EXPECT_FALSE((ef::tensor_shape{6} == ef::tensor_shape{6, 1}));
}

TEST(TensorShape, RejectsBadShapes) {
  EIGENFORMER_EXPECT_THROW_WITH((ef::tensor_shape{1, 2, 3, 4, 5}), ef::shape_error, "rank 5, expected 1 to 4");
  EIGENFORMER_EXPECT_THROW_WITH((ef::tensor_shape(std::span<const index_t>{})), ef::shape_error, "rank 0");
  EIGENFORMER_EXPECT_THROW_WITH((ef::tensor_shape{2, -1}), ef::shape_error, "[2, -1]: negative extent");
  EIGENFORMER_EXPECT_THROW_WITH((ef::tensor_shape{index_t{1} << 40, index_t{1} << 40}), ef::shape_error, "overflows");
}

TEST(TensorShape, CheckShapeNamesBothShapes) {
  EIGENFORMER_EXPECT_THROW_WITH(ef::check_shape("decoder.norm.weight", ef::tensor_shape{512, 64}, ef::tensor_shape{2048, 512}),
                                ef::shape_error, "decoder.norm.weight: shape [512, 64], expected [2048, 512]");
  EXPECT_NO_THROW(ef::check_shape("x", ef::tensor_shape{3}, ef::tensor_shape{3}));
}

TYPED_TEST(TensorTest, ZeroFilledAlignedRowMajor) {
  ef::tensor<TypeParam> t({2, 3, 4});
  EXPECT_EQ(t.size(), 24);
  EXPECT_EQ(t.rank(), 3);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(t.data()) % 64, 0u);
  for (auto v : t.values()) EXPECT_EQ(v, TypeParam(0));
  for (index_t i = 0; i < t.size(); ++i) t(i) = static_cast<TypeParam>(i);
  EXPECT_EQ(t(1, 2, 3), TypeParam(23));  // ((1*3)+2)*4+3
  EXPECT_EQ(t(0, 1, 0), TypeParam(4));
  ef::tensor<TypeParam> u({2, 2, 2, 3});
  for (index_t i = 0; i < u.size(); ++i) u(i) = static_cast<TypeParam>(i);
  EXPECT_EQ(u(1, 1, 1, 2), TypeParam(23));
}

TYPED_TEST(TensorTest, MatrixViewIsZeroCopyAndRowMajor) {
  ef::tensor<TypeParam> t({2, 3, 4});
  auto m = t.matrix();
  EXPECT_EQ(m.rows(), 6);
  EXPECT_EQ(m.cols(), 4);
  EXPECT_EQ(m.data(), t.data());
  m(4, 1) = TypeParam(7);
  EXPECT_EQ(t(1, 1, 1), TypeParam(7));  // row 4 = (1, 1)
  const auto& ct = t;
  EXPECT_EQ(ct.matrix()(4, 1), TypeParam(7));
  EXPECT_EQ(ct.vector()(4 * 4 + 1), TypeParam(7));
  // A column block of a wider matrix: one "head" of a fused [n, 3*d] buffer.
  ef::tensor<TypeParam> qkv({2, 6});
  for (index_t i = 0; i < qkv.size(); ++i) qkv(i) = static_cast<TypeParam>(i);
  auto k = ef::make_view(qkv.data() + 2, 2, 2, 6);
  EXPECT_EQ(k(1, 1), TypeParam(9));
}

TYPED_TEST(TensorTest, ResizeKeepsStorageWhenItFits) {
  ef::tensor<TypeParam> t({4, 8});
  const TypeParam* p = t.data();
  t.resize({2, 8});
  EXPECT_EQ(t.data(), p);
  EXPECT_EQ(t.capacity(), 32);
  t.resize({4, 8});
  EXPECT_EQ(t.data(), p);
  t.resize({5, 8});
  EXPECT_GE(t.capacity(), 40);
  EXPECT_EQ(t.shape(), (ef::tensor_shape{5, 8}));
}

TYPED_TEST(TensorTest, CopyIsDeepAndMoveSteals) {
  ef::tensor<TypeParam> a({3}, TypeParam(2));
  ef::tensor<TypeParam> b = a;
  b(0) = TypeParam(5);
  EXPECT_EQ(a(0), TypeParam(2));
  const TypeParam* p = b.data();
  ef::tensor<TypeParam> c = std::move(b);
  EXPECT_EQ(c.data(), p);
  EXPECT_EQ(c(0), TypeParam(5));
  a = c;
  EXPECT_EQ(a(0), TypeParam(5));
}

TYPED_TEST(TensorTest, FromValuesChecksCount) {
  const std::vector<TypeParam> v{1, 2, 3, 4, 5, 6};
  auto t = ef::tensor<TypeParam>::from_values({2, 3}, v);
  EXPECT_EQ(t(1, 0), TypeParam(4));
  EIGENFORMER_EXPECT_THROW_WITH(ef::tensor<TypeParam>::from_values({2, 2}, v), ef::shape_error,
                                "6 values, expected 4 for shape [2, 2]");
}

TYPED_TEST(TensorTest, CheckedAccess) {
  ef::tensor<TypeParam> t({2, 3});
  t.at(1, 2) = TypeParam(1);
  EXPECT_EQ(t(1, 2), TypeParam(1));
  EIGENFORMER_EXPECT_THROW_WITH(t.at(2, 0), ef::invalid_argument, "index [2, 0] outside shape [2, 3]");
  EIGENFORMER_EXPECT_THROW_WITH(t.at(0), ef::invalid_argument, "outside shape");
  EIGENFORMER_EXPECT_THROW_WITH(t.at(0, -1), ef::invalid_argument, "outside shape");
}

TYPED_TEST(TensorTest, EmptyTensors) {
  ef::tensor<TypeParam> t;
  EXPECT_TRUE(t.empty());
  EXPECT_EQ(t.matrix().size(), 0);
  ef::tensor<TypeParam> z({0, 5});
  EXPECT_EQ(z.size(), 0);
  EXPECT_EQ(z.matrix().rows(), 0);
}

TEST(TensorStorage, LargeBuffersAreHugePageAligned) {
  ef::tensor<float> big({2, 1 << 20});  // 8 MiB: above the huge-page threshold
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(big.data()) % (2u << 20), 0u);
  big(1, (1 << 20) - 1) = 1.0f;
  EXPECT_EQ(big.values().back(), 1.0f);
}

TEST(TensorStorage, SixteenBitStorageType) {
  // Room for 16-bit storage: the container works for any trivially copyable type.
  ef::tensor<std::uint16_t> h({3, 5});
  h(2, 4) = 0x3c00;
  EXPECT_EQ(h.values().back(), 0x3c00);
}
