// The time type of the simulated service (wall-clock time, passed in by the
// caller, never read here) and the ways the API spells it.
#pragma once

#include "sim/settings.hpp"

#include <chrono>
#include <cstdint>
#include <string>

namespace klingd::sim {

using time_point = std::chrono::system_clock::time_point;
using duration = std::chrono::nanoseconds;

// "2026-11-22T10:15:30.123Z"
std::string rfc3339_ms(time_point t);
// Milliseconds since the Unix epoch.
std::int64_t unix_ms(time_point t);
// The x-rate-limit-reset-at-utc value for t, rounded up to the format's
// precision so that waiting until the stated time is always enough.
std::string reset_header_value(time_point t, reset_format f);
// API seconds to real time under a time scale.
duration scaled(double api_seconds, double time_scale);

} // namespace klingd::sim
