// RFC 3339 and epoch renderings of the simulated service's times.
#include "sim/timestamps.hpp"

#include <cmath>
#include <ctime>
#include <fmt/format.h>

namespace klingd::sim {
namespace {

std::string utc_seconds(std::int64_t secs) {
    std::time_t tt = static_cast<std::time_t>(secs);
    std::tm tm{};
    ::gmtime_r(&tt, &tm);
    return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}", tm.tm_year + 1900, tm.tm_mon + 1,
                       tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

std::int64_t floor_div(std::int64_t a, std::int64_t b) {
    std::int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

} // namespace

std::int64_t unix_ms(time_point t) {
    return std::chrono::floor<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

std::string rfc3339_ms(time_point t) {
    std::int64_t ms = unix_ms(t);
    return fmt::format("{}.{:03}Z", utc_seconds(floor_div(ms, 1000)),
                       ms - floor_div(ms, 1000) * 1000);
}

std::string reset_header_value(time_point t, reset_format f) {
    auto secs_up = std::chrono::ceil<std::chrono::seconds>(t.time_since_epoch()).count();
    switch (f) {
    case reset_format::iso:
        return utc_seconds(secs_up) + "Z";
    case reset_format::epoch:
        return std::to_string(secs_up);
    case reset_format::iso_frac:
        break;
    }
    return rfc3339_ms(
        time_point(std::chrono::ceil<std::chrono::milliseconds>(t.time_since_epoch())));
}

duration scaled(double api_seconds, double time_scale) {
    return duration(static_cast<duration::rep>(std::llround(api_seconds * time_scale * 1e9)));
}

} // namespace klingd::sim
