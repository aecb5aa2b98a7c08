// What attnd_soak measured and whether every promise held: a table for people, JSON for records
// (docs/RELIABILITY.md quotes it).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "tests/reliability/soak/soak_load.h"

namespace attnd::soak {

struct SigtermOutcome {
  int exit_code = -1;
  int stuck_calls = 0;  // calls that never came back
  LoadResult load;
};

struct SoakReport {
  std::string backend, transport;
  int concurrency = 0;
  double soak_seconds = 0;
  int64_t soak_calls = 0;
  LoadResult load;      // warm-up and soak together
  int stuck_calls = 0;  // calls that never came back
  bool daemon_alive_after_soak = false;
  int64_t rss_before = -1, rss_after = -1, rss_growth_limit = 0;
  double heap_before = -1, heap_after = -1;
  int64_t heap_growth_limit = 0;
  std::vector<int64_t> rss_samples;  // once a second during the soak
  std::vector<double> heap_samples;  // same instants
  std::map<std::string, double> series_before, series_after;  // NaN: not exported
  std::vector<SigtermOutcome> sigterm;

  void AddLoad(const LoadResult& r);
  void AddSigterm(SigtermOutcome round) { sigterm.push_back(std::move(round)); }

  // Every failed promise, one line each; empty when the run passed.
  std::vector<std::string> Failures() const;
  bool Passed() const { return Failures().empty(); }
  std::string Table() const;
  std::string Json() const;
};

}  // namespace attnd::soak
