// ParallelCopy: every byte of every range lands where it belongs, for sizes below and above the
// parallel threshold, from several callers sharing the helpers at once.
#include "server/engine/parallel_copy.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <thread>
#include <vector>

namespace attnd::engine {
namespace {

std::vector<uint8_t> RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (uint8_t& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

TEST(ParallelCopy, CopiesEveryRangeExactly) {
  ParallelCopy copier(3);
  for (size_t n : {size_t{0}, size_t{1}, size_t{4097}, size_t{1} << 20, (size_t{5} << 20) + 3}) {
    const std::vector<uint8_t> a = RandomBytes(n, 1), b = RandomBytes(n / 3 + 5, 2);
    std::vector<uint8_t> da(n, 0xEE), db(b.size(), 0xEE);
    copier.Copy({{da.data(), a.data(), a.size()}, {db.data(), b.data(), b.size()}});
    EXPECT_EQ(da, a) << n;
    EXPECT_EQ(db, b) << n;
  }
}

TEST(ParallelCopy, CallersShareTheHelpers) {
  ParallelCopy copier(2);
  const std::vector<uint8_t> src = RandomBytes(size_t{3} << 20, 3);
  std::vector<std::thread> callers;
  std::vector<std::vector<uint8_t>> dst(6, std::vector<uint8_t>(src.size()));
  for (int c = 0; c < 6; ++c) {
    callers.emplace_back([&, c] {
      for (int i = 0; i < 20; ++i) {
        std::fill(dst[c].begin(), dst[c].end(), 0);
        copier.Copy(dst[c].data(), src.data(), src.size());
        ASSERT_EQ(dst[c], src);
      }
    });
  }
  for (std::thread& t : callers) t.join();
}

}  // namespace
}  // namespace attnd::engine
