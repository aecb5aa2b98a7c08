#include "server/transport/wire_decoder.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"

namespace attnd {
namespace {

enum WireType { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kStartGroup = 3, kEndGroup = 4, kFixed32 = 5 };

// A read position over the pieces of a message, bounded by a limit (the end of the message or of
// the submessage being read).
class Cursor {
 public:
  explicit Cursor(const std::vector<SlicedBytes::Piece>* pieces) : pieces_(pieces) {
    for (const auto& p : *pieces) limit_ += p.size();
  }

  size_t left() const { return limit_ - pos_; }
  size_t pos() const { return pos_; }
  void set_limit(size_t limit) { limit_ = limit; }
  size_t limit() const { return limit_; }

  bool ReadByte(uint8_t* b) {
    if (pos_ >= limit_) return false;
    while (off_ >= (*pieces_)[piece_].size()) {
      ++piece_;
      off_ = 0;
    }
    *b = (*pieces_)[piece_][off_++];
    ++pos_;
    return true;
  }

  bool ReadVarint(uint64_t* value) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      uint8_t b;
      if (!ReadByte(&b)) return false;
      v |= uint64_t{b & 0x7fu} << shift;
      if ((b & 0x80) == 0) {
        *value = v;
        return true;
      }
    }
    return false;  // more than 10 bytes
  }

  // Hands the next n bytes (n <= left()) to `sink` piece by piece.
  template <typename Sink>
  void Take(size_t n, Sink&& sink) {
    pos_ += n;
    while (n > 0) {
      const SlicedBytes::Piece& p = (*pieces_)[piece_];
      if (off_ >= p.size()) {
        ++piece_;
        off_ = 0;
        continue;
      }
      const size_t take = std::min(n, p.size() - off_);
      sink(p.subspan(off_, take));
      off_ += take;
      n -= take;
    }
  }

 private:
  const std::vector<SlicedBytes::Piece>* pieces_;
  size_t piece_ = 0, off_ = 0, pos_ = 0, limit_ = 0;
};

void AppendVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

void AppendPiece(std::string* out, SlicedBytes::Piece p) {
  out->append(reinterpret_cast<const char*>(p.data()), p.size());
}

class Splitter {
 public:
  Splitter(Cursor* cursor, absl::string_view what) : in_(cursor), what_(what) {}

  absl::Status Malformed(absl::string_view detail) const {
    return absl::InvalidArgumentError(absl::StrCat(what_, ": malformed message at byte ", in_->pos(), ": ", detail));
  }

  // Reads one field's tag. Sets *field and *type.
  absl::Status ReadTag(int* field, int* type, std::string* raw) {
    uint64_t tag;
    if (!in_->ReadVarint(&tag)) return Malformed("truncated tag");
    *field = static_cast<int>(tag >> 3);
    *type = static_cast<int>(tag & 7);
    if (*field == 0 || (tag >> 3) > (uint64_t{1} << 29)) return Malformed("field number out of range");
    if (*type == kStartGroup || *type == kEndGroup || *type > kFixed32) return Malformed("unsupported wire type");
    raw->clear();
    AppendVarint(raw, tag);
    return absl::OkStatus();
  }

  // Copies the value of a field of wire type `type` (its tag already read) to `out`.
  absl::Status CopyValue(int type, std::string* out) {
    size_t n = 0;
    switch (type) {
      case kVarint: {
        uint64_t v;
        if (!in_->ReadVarint(&v)) return Malformed("truncated varint");
        AppendVarint(out, v);
        return absl::OkStatus();
      }
      case kFixed64: n = 8; break;
      case kFixed32: n = 4; break;
      case kLengthDelimited: {
        uint64_t len;
        if (!in_->ReadVarint(&len)) return Malformed("truncated length");
        if (len > in_->left()) return Malformed("length past the end of the message");
        AppendVarint(out, len);
        n = len;
        break;
      }
    }
    if (n > in_->left()) return Malformed("truncated fixed-size field");
    in_->Take(n, [out](SlicedBytes::Piece p) { AppendPiece(out, p); });
    return absl::OkStatus();
  }

  // Reads a Tensor submessage of `len` bytes: data into *data, every other field into *meta.
  absl::Status SplitTensor(size_t len, std::string* meta, SlicedBytes* data) {
    const size_t outer_limit = in_->limit();
    in_->set_limit(in_->pos() + len);
    std::string raw;
    while (in_->left() > 0) {
      int field, type;
      if (absl::Status s = ReadTag(&field, &type, &raw); !s.ok()) return s;
      if (field == kTensorDataField && type == kLengthDelimited) {
        uint64_t n;
        if (!in_->ReadVarint(&n)) return Malformed("truncated tensor data length");
        if (n > in_->left()) return Malformed("tensor data past the end of the message");
        *data = SlicedBytes();  // a repeated singular field: the last one counts, as in protobuf
        in_->Take(n, [data](SlicedBytes::Piece p) { data->Append(p); });
        continue;
      }
      meta->append(raw);
      if (absl::Status s = CopyValue(type, meta); !s.ok()) return s;
    }
    in_->set_limit(outer_limit);
    return absl::OkStatus();
  }

 private:
  Cursor* in_;
  absl::string_view what_;
};

}  // namespace

absl::StatusOr<DecodedMessage> DecodedMessage::Decode(const grpc::ByteBuffer& buffer,
                                                      absl::Span<const int> tensor_fields,
                                                      google::protobuf::Message* skeleton, absl::string_view what) {
  DecodedMessage decoded;
  decoded.slices_ = std::make_shared<std::vector<grpc::Slice>>();
  if (buffer.Valid()) {
    if (grpc::Status s = buffer.Dump(decoded.slices_.get()); !s.ok()) {
      return absl::InternalError(absl::StrCat(what, ": cannot read the received message: ", s.error_message()));
    }
  }
  std::vector<SlicedBytes::Piece> pieces;
  pieces.reserve(decoded.slices_->size());
  for (const grpc::Slice& s : *decoded.slices_) {
    if (s.size() > 0) pieces.emplace_back(s.begin(), s.size());
  }
  Cursor cursor(&pieces);
  decoded.wire_bytes_ = static_cast<int64_t>(cursor.left());
  Splitter split(&cursor, what);
  std::string out, raw;
  while (cursor.left() > 0) {
    int field, type;
    if (absl::Status s = split.ReadTag(&field, &type, &raw); !s.ok()) return s;
    const bool tensor = type == kLengthDelimited &&
                        std::find(tensor_fields.begin(), tensor_fields.end(), field) != tensor_fields.end();
    if (!tensor) {
      out.append(raw);
      if (absl::Status s = split.CopyValue(type, &out); !s.ok()) return s;
      continue;
    }
    uint64_t len;
    if (!cursor.ReadVarint(&len)) return split.Malformed("truncated length");
    if (len > cursor.left()) return split.Malformed("length past the end of the message");
    std::string meta;
    SlicedBytes data;
    if (absl::Status s = split.SplitTensor(len, &meta, &data); !s.ok()) return s;
    out.append(raw);
    AppendVarint(&out, meta.size());
    out.append(meta);
    auto it = std::find_if(decoded.data_.begin(), decoded.data_.end(), [field](const auto& e) { return e.first == field; });
    if (it != decoded.data_.end()) {
      if (!data.empty()) it->second = std::move(data);
    } else {
      decoded.data_.emplace_back(field, std::move(data));
    }
  }
  skeleton->Clear();
  if (!skeleton->ParseFromString(out)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": malformed message (its fields do not parse as ",
                                                   skeleton->GetTypeName(), ")"));
  }
  return decoded;
}

const SlicedBytes& DecodedMessage::data(int field) const {
  static const SlicedBytes kEmpty;
  for (const auto& [f, bytes] : data_) {
    if (f == field) return bytes;
  }
  return kEmpty;
}

}  // namespace attnd
