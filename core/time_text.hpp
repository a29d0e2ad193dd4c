// The one home of time as text: RFC 3339 in UTC out, RFC 3339 and HTTP dates
// in, on C++20 <chrono> calendar types. Never the local time zone: a host set
// to Asia/Tokyo prints and reads the same text as one set to UTC.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

namespace klingd::core {

using sys_ms = std::chrono::sys_time<std::chrono::milliseconds>;

enum class time_precision { seconds, milliseconds };

// "2026-11-22T10:15:30Z" or "2026-11-22T10:15:30.123Z"; a time is floored to the precision.
std::string format_rfc3339(sys_ms t, time_precision p = time_precision::milliseconds);

enum class zone_rule { required, utc_if_missing };

// RFC 3339 date-time: 'T', 't' or ' ' between date and time, any number of fraction
// digits (kept to the millisecond), then 'Z', 'z', "+hh:mm", "-hh:mm" or "+hhmm".
// nullopt for anything else, an impossible date or a time out of range.
std::optional<sys_ms> parse_rfc3339(std::string_view s, zone_rule z = zone_rule::required);

// An HTTP date in the IMF-fixdate form ("Sun, 06 Nov 1994 08:49:37 GMT"); nullopt otherwise.
std::optional<sys_ms> parse_http_date(std::string_view s);

} // namespace klingd::core
