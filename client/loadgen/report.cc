#include "client/loadgen/report.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace attnd::loadgen {
namespace {

absl::string_view Name(DType dtype) {
  const std::string_view name = DTypeName(dtype);
  return absl::string_view(name.data(), name.size());
}

std::string JsonString(absl::string_view s) {
  std::string out = "\"";
  for (const char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          absl::StrAppendFormat(&out, "\\u%04x", static_cast<unsigned char>(c));
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

// JSON has no infinity or NaN; they never occur here except through a bug, so print null.
std::string JsonNumber(double x) { return std::isfinite(x) ? absl::StrFormat("%.6g", x) : "null"; }

std::string ArrivalName(const LoadSpec& spec) {
  if (spec.rate <= 0) return "closed";
  return spec.arrival == Arrival::kPoisson ? "poisson" : "constant";
}

std::string LoadName(const LoadSpec& spec) {
  return spec.rate > 0 ? absl::StrFormat("open loop %.6g/s %s", spec.rate, ArrivalName(spec))
                       : absl::StrFormat("closed loop concurrency %d", spec.concurrency);
}

std::string ErrorsCell(const LoadReport& r, const char* separator) {
  std::string out;
  for (const auto& [code, n] : r.errors_by_code) absl::StrAppend(&out, out.empty() ? "" : separator, code, ":", n);
  return out;
}

}  // namespace

std::string FormatTable(const std::vector<StepResult>& steps) {
  std::string out = absl::StrFormat("%-24s %9s %10s %9s %9s %9s %9s %9s %9s %7s %s\n", "step", "req/s", "GB/s",
                                    "p50 ms", "p90 ms", "p95 ms", "p99 ms", "max ms", "requests", "stable", "errors");
  for (const StepResult& s : steps) {
    const LoadReport& r = s.report;
    const std::string step = s.spec.rate > 0 ? absl::StrFormat("rate %.6g %s", s.spec.rate, ArrivalName(s.spec))
                                             : absl::StrFormat("concurrency %d", s.spec.concurrency);
    absl::StrAppendFormat(&out, "%-24s %9.1f %10.4f %9.3f %9.3f %9.3f %9.3f %9.3f %9d %7s %s\n", step,
                          r.requests_per_s(), r.payload_gb_per_s(), r.latency.p50_ms, r.latency.p90_ms,
                          r.latency.p95_ms, r.latency.p99_ms, r.latency.max_ms, r.ok + r.errors,
                          r.windows_run == 0 ? "-" : r.stable ? "yes" : "no",
                          r.errors == 0 ? "0" : ErrorsCell(r, " "));
  }
  bool any_server = false;
  for (const StepResult& s : steps) any_server |= s.report.server.available;
  if (!any_server) return out;
  // The daemon's account of each step (GetStats): means per request, in ms.
  absl::StrAppendFormat(&out, "\n%-24s %9s %9s %9s %9s %9s %9s %9s %11s\n", "server (ms/request)", "queue", "h2d",
                        "kernel", "d2h", "other", "engine", "total", "req/launch");
  for (const StepResult& s : steps) {
    const ServerBreakdown& b = s.report.server;
    if (!b.available) continue;
    const std::string step = s.spec.rate > 0 ? absl::StrFormat("rate %.6g %s", s.spec.rate, ArrivalName(s.spec))
                                             : absl::StrFormat("concurrency %d", s.spec.concurrency);
    absl::StrAppendFormat(&out, "%-24s %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f %11.2f\n", step, b.queue_ms,
                          b.h2d_ms, b.kernel_ms, b.d2h_ms, b.other_ms, b.engine_ms, b.server_total_ms,
                          b.requests_per_launch);
  }
  return out;
}

std::string FormatSweepJson(const std::vector<StepResult>& steps) {
  std::string out = "{\"steps\":[";
  for (size_t i = 0; i < steps.size(); ++i) absl::StrAppend(&out, i ? "," : "", FormatJson(steps[i].spec, steps[i].report));
  return out + "]}";
}

std::string FormatCsv(const std::vector<StepResult>& steps) {
  std::string out =
      "mode,concurrency,rate,arrival,direction,dtype,batch,seqlen_q,seqlen_k,heads_q,heads_kv,head_dim,causal,"
      "elapsed_s,windows,stable,requests,ok,errors,requests_per_s,payload_gb_per_s,tflops,p50_ms,p90_ms,p95_ms,"
      "p99_ms,max_ms,mean_ms,errors_by_code,server_queue_ms,server_h2d_ms,server_kernel_ms,server_d2h_ms,"
      "server_other_ms,server_engine_ms,server_total_ms,requests_per_launch,transport,resident,wire_bytes_per_call\n";
  for (const StepResult& step : steps) {
    const LoadSpec& s = step.spec;
    const LoadReport& r = step.report;
    absl::StrAppendFormat(&out, "%s,%d,%.6g,%s,%s,%s,%d,%d,%d,%d,%d,%d,%d,", s.rate > 0 ? "open" : "closed",
                          s.concurrency, s.rate, ArrivalName(s), DirectionName(s.direction), Name(s.dtype), s.batch,
                          s.seqlen_q, s.resolved_seqlen_k(), s.heads_q, s.resolved_heads_kv(), s.head_dim, s.causal);
    absl::StrAppendFormat(&out, "%.6g,%d,%d,%d,%d,%d,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%s",
                          r.elapsed_s, r.windows, r.stable, r.ok + r.errors, r.ok, r.errors, r.requests_per_s(),
                          r.payload_gb_per_s(), r.tflops(), r.latency.p50_ms, r.latency.p90_ms, r.latency.p95_ms,
                          r.latency.p99_ms, r.latency.max_ms, r.latency.mean_ms, ErrorsCell(r, ";"));
    const ServerBreakdown& b = r.server;  // empty cells when the daemon gave no GetStats
    absl::StrAppend(&out, b.available ? absl::StrFormat(",%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g", b.queue_ms,
                                                        b.h2d_ms, b.kernel_ms, b.d2h_ms, b.other_ms, b.engine_ms,
                                                        b.server_total_ms, b.requests_per_launch)
                                      : ",,,,,,,,");
    absl::StrAppendFormat(&out, ",%s,%d,%.6g\n", TransportName(s.transport), s.resident, r.wire_bytes_per_call());
  }
  return out;
}

std::string FormatText(const LoadSpec& spec, const LoadReport& r) {
  std::string out = absl::StrFormat(
      "attn_loadgen %s %s batch=%d seqlen_q=%d seqlen_k=%d heads_q=%d heads_kv=%d head_dim=%d causal=%d varlen=%d\n",
      DirectionName(spec.direction), Name(spec.dtype), spec.batch, spec.seqlen_q, spec.resolved_seqlen_k(),
      spec.heads_q, spec.resolved_heads_kv(), spec.head_dim, spec.causal, spec.varlen);
  absl::StrAppendFormat(&out, "target %s, %s, measured %.2f s: %d ok, %d errors\n", spec.target, LoadName(spec),
                        r.elapsed_s, r.ok, r.errors);
  if (r.windows_run > 0) {
    absl::StrAppendFormat(&out, "windows     %d of %.3g s reported, %d measured, %s\n", r.windows, spec.window_s,
                          r.windows_run, r.stable ? "stable" : "NOT stable (step cap reached)");
  }
  absl::StrAppendFormat(&out, "throughput  %.1f requests/s, %.3f GB/s payload (%.3f up, %.3f down), %.3f TFLOP/s\n",
                        r.requests_per_s(), r.payload_gb_per_s(), r.elapsed_s > 0 ? r.request_bytes / r.elapsed_s / 1e9 : 0,
                        r.elapsed_s > 0 ? r.response_bytes / r.elapsed_s / 1e9 : 0, r.tflops());
  absl::StrAppendFormat(&out, "transport   %s%s, %.0f wire bytes per call (protobuf messages, both ways)\n",
                        TransportName(spec.transport), spec.resident ? " + resident handles" : "",
                        r.wire_bytes_per_call());
  absl::StrAppendFormat(&out, "latency ms  p50 %.3f  p90 %.3f  p95 %.3f  p99 %.3f  max %.3f  (mean %.3f, min %.3f)\n",
                        r.latency.p50_ms, r.latency.p90_ms, r.latency.p95_ms, r.latency.p99_ms, r.latency.max_ms, r.latency.mean_ms,
                        r.latency.min_ms);
  for (const WorkloadReport& w : r.workloads) {
    absl::StrAppendFormat(&out, "workload    %-12s %8d ok %5d errors  %9.1f req/s  p50 %.3f  p99 %.3f ms  %.0f wire B/call\n",
                          w.name, w.ok, w.errors, r.elapsed_s > 0 ? w.ok / r.elapsed_s : 0, w.latency.p50_ms,
                          w.latency.p99_ms, w.ok > 0 ? static_cast<double>(w.wire_bytes) / w.ok : 0);
  }
  for (const auto& [code, n] : r.errors_by_code) {
    absl::StrAppendFormat(&out, "error       %s x%d: %s\n", code, n, r.error_examples.at(code));
  }
  if (spec.check) {
    absl::StrAppendFormat(&out, "check       %d responses vs local CPU backend, %d mismatches, max rel L2 %.3g%s\n",
                          r.checked, r.mismatches, r.max_rel_l2,
                          r.first_mismatch.empty() ? "" : absl::StrCat(" (first: ", r.first_mismatch, ")"));
  }
  if (r.server.available) out += BreakdownText(r.server);
  return out;
}

std::string FormatJson(const LoadSpec& spec, const LoadReport& r) {
  std::string out = "{";
  absl::StrAppend(&out, "\"target\":", JsonString(spec.target), ",\"direction\":\"", DirectionName(spec.direction),
                  "\",\"dtype\":\"", Name(spec.dtype), "\"");
  absl::StrAppend(&out, ",\"batch\":", spec.batch, ",\"seqlen_q\":", spec.seqlen_q,
                  ",\"seqlen_k\":", spec.resolved_seqlen_k(), ",\"heads_q\":", spec.heads_q,
                  ",\"heads_kv\":", spec.resolved_heads_kv(), ",\"head_dim\":", spec.head_dim,
                  ",\"causal\":", spec.causal ? "true" : "false", ",\"varlen\":", spec.varlen ? "true" : "false");
  absl::StrAppend(&out, ",\"mode\":\"", spec.rate > 0 ? "open" : "closed", "\",\"rate\":", JsonNumber(spec.rate),
                  ",\"arrival\":\"", ArrivalName(spec), "\",\"windows\":", r.windows, ",\"windows_run\":",
                  r.windows_run, ",\"stable\":", r.stable ? "true" : "false");
  absl::StrAppend(&out, ",\"concurrency\":", spec.concurrency, ",\"elapsed_s\":", JsonNumber(r.elapsed_s),
                  ",\"requests\":", r.ok + r.errors, ",\"ok\":", r.ok, ",\"errors\":", r.errors);
  absl::StrAppend(&out, ",\"errors_by_code\":{");
  bool first = true;
  for (const auto& [code, n] : r.errors_by_code) {
    absl::StrAppend(&out, first ? "" : ",", JsonString(code), ":", n);
    first = false;
  }
  absl::StrAppend(&out, "},\"error_examples\":{");
  first = true;
  for (const auto& [code, message] : r.error_examples) {
    absl::StrAppend(&out, first ? "" : ",", JsonString(code), ":", JsonString(message));
    first = false;
  }
  absl::StrAppend(&out, "},\"requests_per_s\":", JsonNumber(r.requests_per_s()),
                  ",\"request_bytes\":", r.request_bytes, ",\"response_bytes\":", r.response_bytes,
                  ",\"payload_gb_per_s\":", JsonNumber(r.payload_gb_per_s()), ",\"tflops\":", JsonNumber(r.tflops()));
  absl::StrAppend(&out, ",\"latency_ms\":{\"p50\":", JsonNumber(r.latency.p50_ms), ",\"p90\":",
                  JsonNumber(r.latency.p90_ms), ",\"p95\":", JsonNumber(r.latency.p95_ms), ",\"p99\":", JsonNumber(r.latency.p99_ms), ",\"max\":",
                  JsonNumber(r.latency.max_ms), ",\"mean\":", JsonNumber(r.latency.mean_ms), ",\"min\":",
                  JsonNumber(r.latency.min_ms), "}");
  absl::StrAppend(&out, ",\"transport\":\"", TransportName(spec.transport), "\",\"resident\":",
                  spec.resident ? "true" : "false", ",\"wire_bytes\":", r.wire_bytes,
                  ",\"wire_bytes_per_call\":", JsonNumber(r.wire_bytes_per_call()), ",\"workloads\":[");
  for (size_t i = 0; i < r.workloads.size(); ++i) {
    const WorkloadReport& w = r.workloads[i];
    absl::StrAppend(&out, i ? "," : "", "{\"name\":", JsonString(w.name), ",\"ok\":", w.ok, ",\"errors\":", w.errors,
                    ",\"requests_per_s\":", JsonNumber(r.elapsed_s > 0 ? w.ok / r.elapsed_s : 0),
                    ",\"request_bytes\":", w.request_bytes, ",\"response_bytes\":", w.response_bytes,
                    ",\"wire_bytes\":", w.wire_bytes, ",\"p50_ms\":", JsonNumber(w.latency.p50_ms),
                    ",\"p99_ms\":", JsonNumber(w.latency.p99_ms), "}");
  }
  absl::StrAppend(&out, "]");
  absl::StrAppend(&out, ",\"check\":", spec.check ? "true" : "false", ",\"checked\":", r.checked,
                  ",\"mismatches\":", r.mismatches, ",\"max_rel_l2\":", JsonNumber(r.max_rel_l2),
                  ",\"first_mismatch\":", JsonString(r.first_mismatch));
  if (r.server.available) absl::StrAppend(&out, ",\"server\":", BreakdownJson(r.server));
  return out + "}";
}

}  // namespace attnd::loadgen
