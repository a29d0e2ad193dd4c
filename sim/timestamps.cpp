// RFC 3339 and epoch renderings of the simulated service's times, through
// core's one time-text module.
#include "sim/timestamps.hpp"

#include "core/time_text.hpp"

#include <cmath>

namespace klingd::sim {

namespace chr = std::chrono;

std::int64_t unix_ms(time_point t) {
    return chr::floor<chr::milliseconds>(t.time_since_epoch()).count();
}

std::string rfc3339_ms(time_point t) {
    return core::format_rfc3339(chr::floor<chr::milliseconds>(t));
}

std::string reset_header_value(time_point t, reset_format f) {
    switch (f) {
    case reset_format::iso:
        return core::format_rfc3339(chr::ceil<chr::seconds>(t), core::time_precision::seconds);
    case reset_format::epoch:
        return std::to_string(chr::ceil<chr::seconds>(t).time_since_epoch().count());
    case reset_format::iso_frac:
        break;
    }
    return core::format_rfc3339(chr::ceil<chr::milliseconds>(t));
}

duration scaled(double api_seconds, double time_scale) {
    return duration(static_cast<duration::rep>(std::llround(api_seconds * time_scale * 1e9)));
}

} // namespace klingd::sim
