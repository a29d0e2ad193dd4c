// The system clock source: wall time at start plus steady time since.
#include "daemon/clock.hpp"

namespace klingd::daemon {

namespace chr = std::chrono;

system_clock::system_clock()
    : wall_at_start_(chr::system_clock::now()), steady_at_start_(chr::steady_clock::now()) {}

core::time_point system_clock::now() const {
    return chr::floor<core::milliseconds>(wall_at_start_ +
                                          (chr::steady_clock::now() - steady_at_start_));
}

core::milliseconds system_clock::wall_offset() const {
    auto steady = chr::steady_clock::now() - steady_at_start_;
    auto wall = chr::system_clock::now() - wall_at_start_;
    return chr::round<core::milliseconds>(wall - steady);
}

core::time_point system_clock::wall_now() const {
    return chr::time_point_cast<core::milliseconds>(chr::system_clock::now());
}

} // namespace klingd::daemon
