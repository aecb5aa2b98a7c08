// attn_loadgen's output: a human summary, or one JSON object for machines (--json).
#pragma once

#include <string>
#include <vector>

#include "client/loadgen/load_runner.h"
#include "client/loadgen/load_spec.h"

namespace attnd::loadgen {

// One step of a sweep: the spec it ran with (its concurrency or rate) and what it measured.
struct StepResult {
  LoadSpec spec;
  LoadReport report;
};

std::string FormatText(const LoadSpec& spec, const LoadReport& report);
std::string FormatJson(const LoadSpec& spec, const LoadReport& report);
// A sweep: one row per step (table), {"steps":[FormatJson of each]} (JSON), header + rows (CSV).
std::string FormatTable(const std::vector<StepResult>& steps);
std::string FormatSweepJson(const std::vector<StepResult>& steps);
std::string FormatCsv(const std::vector<StepResult>& steps);

}  // namespace attnd::loadgen
