// SlicedBytes: the bytes of one field of a received gRPC message, left where gRPC put them: a list
// of pieces of the message's slices. Nothing is copied until CopyTo() gathers them into their
// destination, which is the one copy a received tensor costs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/types/span.h"

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

  // Copies the bytes [offset, offset + n) into `dest` (n <= size() - offset).
  void CopyTo(void* dest, size_t offset, size_t n) const {
    uint8_t* out = static_cast<uint8_t*>(dest);
    for (const Piece& p : pieces_) {
      if (n == 0) break;
      if (offset >= p.size()) {
        offset -= p.size();
        continue;
      }
      const size_t take = std::min(p.size() - offset, n);
      std::memcpy(out, p.data() + offset, take);
      out += take;
      n -= take;
      offset = 0;
    }
  }
  void CopyTo(void* dest) const { CopyTo(dest, 0, size_); }

 private:
  std::vector<Piece> pieces_;
  size_t size_ = 0;
};

}  // namespace attnd
