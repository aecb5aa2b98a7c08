// SlicedBytes: the bytes of one field of a received gRPC message, left where gRPC put them: a list
// of pieces of the message's slices. Nothing is copied until CopyTo() gathers them into their
// destination, which is the one copy a received tensor costs.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/types/span.h"
#include "server/transport/range_copier.h"

namespace attnd {

class SlicedBytes {
 public:
  using Piece = absl::Span<const uint8_t>;

  void Append(Piece piece) {
    if (piece.empty()) return;
    pieces_.push_back(piece);
    size_ += piece.size();
  }
  int64_t size() const { return static_cast<int64_t>(size_); }
  bool empty() const { return size_ == 0; }
  const std::vector<Piece>& pieces() const { return pieces_; }
  // The bytes when they lie in one piece, else nullptr.
  const uint8_t* contiguous() const { return pieces_.size() == 1 ? pieces_[0].data() : nullptr; }

  // The copies that move bytes [offset, offset + n) (n <= size() - offset) to `dest`, one per
  // piece they touch, appended to `ranges`.
  void AppendCopies(void* dest, size_t offset, size_t n, std::vector<CopyRange>* ranges) const {
    ForEachPart(dest, offset, n, [ranges](uint8_t* to, const uint8_t* from, size_t bytes) {
      ranges->push_back({to, from, bytes});
    });
  }

  // Gathers the bytes [offset, offset + n) into `dest` through `copy` (on the caller by default).
  // Under kCopierMinBytes the caller copies: a small call should not pay for building ranges.
  static constexpr size_t kCopierMinBytes = size_t{256} << 10;
  void CopyTo(void* dest, size_t offset, size_t n, const RangeCopier& copy = CopyRangesSerially) const {
    if (n < kCopierMinBytes) {
      ForEachPart(dest, offset, n, [](uint8_t* to, const uint8_t* from, size_t bytes) { std::memcpy(to, from, bytes); });
      return;
    }
    std::vector<CopyRange> ranges;
    ranges.reserve(pieces_.size());
    AppendCopies(dest, offset, n, &ranges);
    copy(ranges);
  }
  void CopyTo(void* dest, const RangeCopier& copy = CopyRangesSerially) const { CopyTo(dest, 0, size_, copy); }

 private:
  // f(to, from, bytes) for each piece of bytes [offset, offset + n), `to` advancing from `dest`.
  template <typename F>
  void ForEachPart(void* dest, size_t offset, size_t n, F&& f) const {
    uint8_t* out = static_cast<uint8_t*>(dest);
    for (const Piece& p : pieces_) {
      if (n == 0) break;
      if (offset >= p.size()) {
        offset -= p.size();
        continue;
      }
      const size_t take = std::min(p.size() - offset, n);
      f(out, p.data() + offset, take);
      out += take;
      n -= take;
      offset = 0;
    }
  }

  std::vector<Piece> pieces_;
  size_t size_ = 0;
};

}  // namespace attnd
