#include "client/loadgen/workload_file.h"

#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "client/attnd/tensors.h"

namespace attnd::loadgen {
namespace {

absl::Status Bad(int line, const std::string& key, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("workload file line ", line, ": ", key, ": ", what));
}

bool ParseBool(const std::string& v, bool* out) {
  if (v == "true" || v == "1") return (*out = true), true;
  if (v == "false" || v == "0") return (*out = false), true;
  return false;
}

}  // namespace

absl::StatusOr<Direction> ParseDirection(const std::string& text) {
  if (text == "forward") return Direction::kForward;
  if (text == "backward") return Direction::kBackward;
  if (text == "train") return Direction::kTrain;
  return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not forward, backward or train"));
}

absl::StatusOr<Transport> ParseTransport(const std::string& text) {
  if (text == "proto") return Transport::kProto;
  if (text == "shm") return Transport::kSharedMemory;
  if (text == "cuda_ipc") return Transport::kCudaIpc;
  return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not proto, shm or cuda_ipc"));
}

absl::StatusOr<std::vector<Workload>> ParseWorkloads(const std::string& text, const LoadSpec& base) {
  std::vector<Workload> workloads;
  int line_number = 0;
  for (absl::string_view raw : absl::StrSplit(text, '\n')) {
    ++line_number;
    absl::string_view line = raw.substr(0, raw.find('#'));
    line = absl::StripAsciiWhitespace(line);
    if (line.empty()) continue;
    Workload w;
    w.spec = base;
    w.name = absl::StrCat("workload", workloads.size() + 1);
    for (absl::string_view token : absl::StrSplit(line, ' ', absl::SkipWhitespace())) {
      const size_t eq = token.find('=');
      if (eq == absl::string_view::npos) return Bad(line_number, std::string(token), "expected key=value");
      const std::string key(token.substr(0, eq)), value(token.substr(eq + 1));
      LoadSpec& s = w.spec;
      int* int_field = key == "batch" ? &s.batch : key == "seqlen_q" ? &s.seqlen_q : key == "seqlen_k" ? &s.seqlen_k
                       : key == "heads_q" ? &s.heads_q : key == "heads_kv" ? &s.heads_kv
                       : key == "head_dim" ? &s.head_dim : key == "payloads" ? &s.payloads : nullptr;
      bool* bool_field = key == "causal" ? &s.causal : key == "varlen" ? &s.varlen
                         : key == "resident" ? &s.resident : nullptr;
      if (int_field != nullptr) {
        if (!absl::SimpleAtoi(value, int_field) || *int_field < 0) return Bad(line_number, key, "not a count");
      } else if (bool_field != nullptr) {
        if (!ParseBool(value, bool_field)) return Bad(line_number, key, "not true/false");
      } else if (key == "name") {
        w.name = value;
      } else if (key == "weight") {
        if (!absl::SimpleAtod(value, &w.weight) || !(w.weight > 0)) return Bad(line_number, key, "must be > 0");
      } else if (key == "dtype") {
        absl::StatusOr<DType> d = ParseDType(value);
        if (!d.ok()) return Bad(line_number, key, std::string(d.status().message()));
        s.dtype = *d;
      } else if (key == "direction") {
        absl::StatusOr<Direction> d = ParseDirection(value);
        if (!d.ok()) return Bad(line_number, key, std::string(d.status().message()));
        s.direction = *d;
      } else if (key == "transport") {
        absl::StatusOr<Transport> t = ParseTransport(value);
        if (!t.ok()) return Bad(line_number, key, std::string(t.status().message()));
        s.transport = *t;
      } else {
        return Bad(line_number, key, "unknown key");
      }
    }
    if (w.spec.batch < 1 || w.spec.seqlen_q < 1 || w.spec.heads_q < 1 || w.spec.head_dim < 1 || w.spec.payloads < 1) {
      return Bad(line_number, "shape", "batch, seqlen_q, heads_q, head_dim and payloads must be at least 1");
    }
    if (w.spec.heads_q % w.spec.resolved_heads_kv() != 0) {
      return Bad(line_number, "heads_kv", "must divide heads_q");
    }
    if (w.spec.resident && w.spec.direction != Direction::kTrain) {
      return Bad(line_number, "resident", "applies to direction=train only");
    }
    workloads.push_back(std::move(w));
  }
  if (workloads.empty()) return absl::InvalidArgumentError("workload file: no workload in it");
  return workloads;
}

absl::StatusOr<std::vector<Workload>> ReadWorkloadFile(const std::string& path, const LoadSpec& base) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("--workload_file: cannot read ", path));
  std::stringstream text;
  text << in.rdbuf();
  return ParseWorkloads(text.str(), base);
}

}  // namespace attnd::loadgen
