// The CPU backend's tile conversions agree bit for bit with server/core/float16.h, which the
// oracle's inputs are rounded with.
#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "server/backends/cpu/tile_io.h"

namespace attnd::cpu {
namespace {

TEST(CpuTileIo, BranchlessFp16ConversionMatchesFloat16HForEveryInput) {
  for (uint32_t h = 0; h <= 0xffffu; ++h) {
    const uint32_t want = FloatBits(Fp16ToFloat(static_cast<uint16_t>(h)));
    const uint32_t got = FloatBits(Fp16ToFloatBranchless(static_cast<uint16_t>(h)));
    ASSERT_EQ(got, want) << "fp16 bits 0x" << std::hex << h;
  }
}

TEST(CpuTileIo, LoadRowsConvertsAndZeroPadsEveryDType) {
  const std::vector<float> values = {1.5f, -2.25f, 3.0e-6f, 65504.f, -0.f, 7.f};
  for (DType t : {DType::kBF16, DType::kFP16, DType::kFP32}) {
    std::vector<uint16_t> half(values.size());
    for (size_t i = 0; i < values.size(); ++i) {
      half[i] = t == DType::kBF16 ? FloatToBf16(values[i]) : FloatToFp16(values[i]);
    }
    const void* src = t == DType::kFP32 ? static_cast<const void*>(values.data()) : half.data();
    // Two rows of three, stride 3, into a tile with ld 8 padded to 4 columns.
    std::vector<float> tile(16, 99.f);
    LoadRows(t, src, 3, 2, 3, 4, tile.data(), 8);
    for (int r = 0; r < 2; ++r) {
      for (int c = 0; c < 3; ++c) {
        const size_t i = size_t(r * 3 + c);
        const float want = t == DType::kFP32 ? values[i] : t == DType::kBF16 ? Bf16ToFloat(half[i]) : Fp16ToFloat(half[i]);
        EXPECT_EQ(FloatBits(tile[size_t(r * 8 + c)]), FloatBits(want)) << DTypeName(t) << " " << r << "," << c;
      }
      EXPECT_EQ(tile[size_t(r * 8 + 3)], 0.f);   // padding zeroed
      EXPECT_EQ(tile[size_t(r * 8 + 4)], 99.f);  // beyond the padding untouched
    }
  }
}

}  // namespace
}  // namespace attnd::cpu
