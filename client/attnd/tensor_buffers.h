// Tensor bytes that live in the caller's memory rather than in a request or response message.
//
// attnd::Client sends a request's tensor bytes from where they lie (no copy into the message) and
// can copy a response's tensor bytes once, straight from the received gRPC slices, into buffers
// the caller owns. An empty InputBytes / OutputBytes means "use the message": the request tensor's
// own `data` (or region), the response tensor's `data` string.
#pragma once

#include <cstddef>

namespace attnd {

struct InputBytes {
  const void* data = nullptr;
  size_t size = 0;
  bool empty() const { return data == nullptr; }
};

struct OutputBytes {
  void* data = nullptr;
  size_t size = 0;  // must equal the response tensor's byte count
  bool empty() const { return data == nullptr; }
};

// For a blocking call the bytes need to live until it returns; for an asynchronous one, until its
// callback has run.
struct ForwardBuffers {
  InputBytes q, k, v;
  OutputBytes out, lse;
};

struct BackwardBuffers {
  InputBytes q, k, v, out, lse, grad_out;
  OutputBytes grad_q, grad_k, grad_v;
};

}  // namespace attnd
