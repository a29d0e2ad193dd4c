// Fixed-window request counting for the simulated account.
#include "sim/rate_limiter.hpp"

#include <algorithm>

namespace klingd::sim {

rate_limiter::rate_limiter(int limit, duration window)
    : limit_(limit), window_(std::max(window, duration(1))) {}

std::int64_t rate_limiter::window_index(time_point now) const {
    auto since = std::chrono::duration_cast<duration>(now.time_since_epoch());
    auto q = since / window_;
    return (since % window_ < duration::zero()) ? q - 1 : q;
}

bool rate_limiter::try_acquire(time_point now) {
    auto index = window_index(now);
    if (index != current_) {
        current_ = index;
        used_ = 0;
    }
    if (limit_ > 0 && used_ >= limit_)
        return false;
    ++used_;
    return true;
}

time_point rate_limiter::window_end(time_point now) const {
    auto end = window_ * (window_index(now) + 1);
    return time_point(std::chrono::duration_cast<time_point::duration>(end));
}

} // namespace klingd::sim
