#include "tests/reliability/soak/soak_report.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"

namespace attnd::soak {
namespace {

double MiB(int64_t bytes) { return static_cast<double>(bytes) / (1 << 20); }

// "OK=123 CANCELLED=4" for each kind of a load.
std::string Outcomes(const LoadResult& r, const char* indent) {
  std::string out;
  for (const auto& [kind, codes] : r.outcomes) {
    std::vector<std::string> parts;
    for (const auto& [code, n] : codes) parts.push_back(absl::StrCat(absl::StatusCodeToString(code), "=", n));
    absl::StrAppend(&out, indent, absl::StrFormat("%-15s", CallKindName(kind)), absl::StrJoin(parts, " "), "\n");
  }
  return out;
}

std::string OutcomesJson(const LoadResult& r) {
  std::vector<std::string> kinds;
  for (const auto& [kind, codes] : r.outcomes) {
    std::vector<std::string> parts;
    for (const auto& [code, n] : codes) parts.push_back(absl::StrCat("\"", absl::StatusCodeToString(code), "\": ", n));
    kinds.push_back(absl::StrCat("\"", CallKindName(kind), "\": {", absl::StrJoin(parts, ", "), "}"));
  }
  return absl::StrCat("{", absl::StrJoin(kinds, ", "), "}");
}

}  // namespace

void SoakReport::AddLoad(const LoadResult& r) {
  for (const auto& [kind, codes] : r.outcomes) {
    for (const auto& [code, n] : codes) load.outcomes[kind][code] += n;
  }
  load.calls += r.calls;
  load.checked_ok += r.checked_ok;
  load.broken_promises += r.broken_promises;
  for (const std::string& e : r.examples) {
    if (load.examples.size() < 20) load.examples.push_back(e);
  }
}

std::vector<std::string> SoakReport::Failures() const {
  std::vector<std::string> f;
  if (!daemon_alive_after_soak) f.push_back("the daemon died during the soak");
  if (load.broken_promises > 0) f.push_back(absl::StrCat(load.broken_promises, " soak calls broke a promise"));
  if (stuck_calls > 0) f.push_back(absl::StrCat(stuck_calls, " soak calls never came back"));
  if (load.checked_ok == 0) f.push_back("no good call was answered and checked");
  if (daemon_alive_after_soak && rss_after - rss_before > rss_growth_limit) {
    f.push_back(absl::StrFormat("resident memory grew %.1f MiB over the soak (limit %.1f MiB)",
                                MiB(rss_after - rss_before), MiB(rss_growth_limit)));
  }
  if (daemon_alive_after_soak && (heap_before < 0 || heap_after - heap_before > heap_growth_limit)) {
    f.push_back(heap_before < 0 ? std::string("the daemon exports no attnd_heap_in_use_bytes")
                                : absl::StrFormat("heap in use grew %.1f MiB over the soak (limit %.1f MiB)",
                                                  (heap_after - heap_before) / (1 << 20), MiB(heap_growth_limit)));
  }
  for (const auto& [series, before] : series_before) {
    if (std::isnan(before)) continue;  // not exported by this daemon (e.g. no device pool on the CPU)
    auto after = series_after.find(series);
    if (after == series_after.end() || after->second != before) {
      f.push_back(absl::StrCat(series, " was ", before, " before the soak and ",
                               after == series_after.end() ? "absent" : absl::StrCat(after->second), " after"));
    }
  }
  for (size_t i = 0; i < sigterm.size(); ++i) {
    const SigtermOutcome& s = sigterm[i];
    if (s.exit_code != 0) f.push_back(absl::StrCat("SIGTERM round ", i + 1, ": attnd exited ", s.exit_code));
    if (s.stuck_calls > 0) f.push_back(absl::StrCat("SIGTERM round ", i + 1, ": ", s.stuck_calls, " calls never came back"));
    if (s.load.broken_promises > 0) {
      f.push_back(absl::StrCat("SIGTERM round ", i + 1, ": ", s.load.broken_promises, " calls broke a promise"));
    }
  }
  return f;
}

std::string SoakReport::Table() const {
  std::string t = absl::StrFormat("attnd soak: backend=%s transport=%s concurrency=%d\n", backend, transport, concurrency);
  absl::StrAppendFormat(&t, "soak: %.1f s, %d calls (%.0f/s), %d good answers checked, %d broken promises\n",
                        soak_seconds, soak_calls, soak_seconds > 0 ? soak_calls / soak_seconds : 0.0,
                        load.checked_ok, load.broken_promises);
  absl::StrAppend(&t, Outcomes(load, "  "));
  const int64_t peak = rss_samples.empty() ? -1 : *std::max_element(rss_samples.begin(), rss_samples.end());
  absl::StrAppendFormat(&t, "daemon rss idle before %.1f MiB, peak under load %.1f MiB, idle after %.1f MiB (limit +%.0f)\n",
                        MiB(rss_before), MiB(peak), MiB(rss_after), MiB(rss_growth_limit));
  double heap_low = 0, heap_high = 0;
  if (!heap_samples.empty()) {
    heap_low = *std::min_element(heap_samples.begin(), heap_samples.end());
    heap_high = *std::max_element(heap_samples.begin(), heap_samples.end());
  }
  absl::StrAppendFormat(&t, "daemon heap in use idle before %.2f MiB, under load %.2f..%.2f MiB, idle after %.2f MiB "
                        "(limit +%.0f)\n", heap_before / (1 << 20), heap_low / (1 << 20), heap_high / (1 << 20),
                        heap_after / (1 << 20), MiB(heap_growth_limit));
  for (const auto& [series, before] : series_before) {
    auto after = series_after.find(series);
    if (std::isnan(before)) {
      absl::StrAppend(&t, "  ", series, ": not exported by this daemon\n");
      continue;
    }
    absl::StrAppend(&t, "  ", series, ": ", before, " -> ",
                    after == series_after.end() ? std::string("absent") : absl::StrCat(after->second), "\n");
  }
  for (size_t i = 0; i < sigterm.size(); ++i) {
    const SigtermOutcome& s = sigterm[i];
    absl::StrAppendFormat(&t, "SIGTERM round %d: exit %d, %d calls, %d checked OK, %d never came back, %d broken\n",
                          i + 1, s.exit_code, s.load.calls, s.load.checked_ok, s.stuck_calls, s.load.broken_promises);
    absl::StrAppend(&t, Outcomes(s.load, "  "));
  }
  for (const std::string& e : load.examples) absl::StrAppend(&t, "  example: ", e, "\n");
  for (const SigtermOutcome& s : sigterm) {
    for (const std::string& e : s.load.examples) absl::StrAppend(&t, "  example (SIGTERM): ", e, "\n");
  }
  const std::vector<std::string> failures = Failures();
  absl::StrAppend(&t, failures.empty() ? "PASSED\n" : absl::StrCat("FAILED:\n  ", absl::StrJoin(failures, "\n  "), "\n"));
  return t;
}

std::string SoakReport::Json() const {
  std::vector<std::string> rounds;
  for (const SigtermOutcome& s : sigterm) {
    rounds.push_back(absl::StrCat("{\"exit_code\": ", s.exit_code, ", \"calls\": ", s.load.calls, ", \"checked_ok\": ",
                                  s.load.checked_ok, ", \"never_came_back\": ", s.stuck_calls,
                                  ", \"broken_promises\": ", s.load.broken_promises, ", \"outcomes\": ",
                                  OutcomesJson(s.load), "}"));
  }
  std::vector<std::string> series;
  for (const auto& [name, before] : series_before) {
    auto after = series_after.find(name);
    if (std::isnan(before)) continue;
    series.push_back(absl::StrCat("{\"series\": \"", absl::StrReplaceAll(name, {{"\"", "\\\""}}), "\", \"before\": ", before,
                                  ", \"after\": ", after == series_after.end() ? std::string("null") : absl::StrCat(after->second), "}"));
  }
  return absl::StrCat("{\"backend\": \"", backend, "\", \"transport\": \"", transport, "\", \"concurrency\": ",
                      concurrency, ", \"soak_seconds\": ", soak_seconds, ", \"soak_calls\": ", soak_calls,
                      ", \"checked_ok\": ", load.checked_ok, ", \"broken_promises\": ", load.broken_promises,
                      ", \"never_came_back\": ", stuck_calls, ", \"outcomes\": ", OutcomesJson(load),
                      ", \"rss_before\": ", rss_before, ", \"rss_after\": ", rss_after,
                      ", \"heap_before\": ", static_cast<int64_t>(heap_before),
                      ", \"heap_after\": ", static_cast<int64_t>(heap_after),
                      ", \"flat_series\": [", absl::StrJoin(series, ", "), "], \"sigterm_rounds\": [",
                      absl::StrJoin(rounds, ", "), "], \"passed\": ", Passed() ? "true" : "false", "}\n");
}

}  // namespace attnd::soak
