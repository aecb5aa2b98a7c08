// gRPC status -> absl::Status keeps the code, the message and binary details.
#include "client/attnd/grpc_status.h"

#include "gtest/gtest.h"

namespace attnd {
namespace {

TEST(GrpcStatus, EveryCodeAndMessagePassThrough) {
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
  for (int code = 1; code <= 16; ++code) {
    const absl::Status s = FromGrpcStatus(grpc::Status(static_cast<grpc::StatusCode>(code), "q.shape: rank 3"));
    EXPECT_EQ(static_cast<int>(s.code()), code);
    EXPECT_EQ(s.message(), "q.shape: rank 3");
  }
  EXPECT_EQ(FromGrpcStatus(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "")).code(),
            absl::StatusCode::kDeadlineExceeded);
}

TEST(GrpcStatus, DetailsBecomeAPayload) {
  const absl::Status s = FromGrpcStatus(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "bad", "\x08\x03"));
  ASSERT_TRUE(s.GetPayload(kGrpcErrorDetailsUrl).has_value());
  EXPECT_EQ(std::string(*s.GetPayload(kGrpcErrorDetailsUrl)), "\x08\x03");
}

TEST(GrpcStatus, OutOfRangeCodesBecomeUnknown) {
  // 20 lies inside the enum's value range (5 bits), so the cast itself is well defined.
  const absl::Status s = FromGrpcStatus(grpc::Status(static_cast<grpc::StatusCode>(20), "odd"));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnknown);
  EXPECT_EQ(s.message(), "odd");
}

}  // namespace
}  // namespace attnd
