// attn_loadgen's output: a human summary, or one JSON object for machines (--json).
#pragma once

#include <string>

#include "client/loadgen/load_runner.h"
#include "client/loadgen/load_spec.h"

namespace attnd::loadgen {

std::string FormatText(const LoadSpec& spec, const LoadReport& report);
std::string FormatJson(const LoadSpec& spec, const LoadReport& report);

}  // namespace attnd::loadgen
