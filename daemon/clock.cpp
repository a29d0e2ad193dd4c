// The system clock source: wall time at start plus steady time since.
#include "daemon/clock.hpp"

namespace klingd::daemon {

namespace chr = std::chrono;

system_clock::system_clock()
    : wall_at_start_(chr::time_point_cast<core::milliseconds>(chr::system_clock::now())),
      steady_at_start_(chr::steady_clock::now()) {}

core::time_point system_clock::now() const {
    return wall_at_start_ +
           chr::duration_cast<core::milliseconds>(chr::steady_clock::now() - steady_at_start_);
}

core::time_point system_clock::wall_now() const {
    return chr::time_point_cast<core::milliseconds>(chr::system_clock::now());
}

} // namespace klingd::daemon
