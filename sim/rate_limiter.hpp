// The account's requests-per-minute budget: fixed windows aligned to the Unix
// epoch, shared by every authenticated API call. A refused call uses no budget.
#pragma once

#include "sim/timestamps.hpp"

#include <cstdint>

namespace klingd::sim {

class rate_limiter {
public:
    // limit 0 means unlimited; window is the real length of one window.
    rate_limiter(int limit, duration window);

    // Returns false, counting nothing, when this window's budget is spent.
    bool try_acquire(time_point now);
    // When the window that holds now ends.
    time_point window_end(time_point now) const;

    void set_limit(int limit) { limit_ = limit; }
    int limit() const { return limit_; }

private:
    std::int64_t window_index(time_point now) const;

    int limit_;
    duration window_;
    std::int64_t current_ = INT64_MIN;
    int used_ = 0;
};

} // namespace klingd::sim
