// The account's requests-per-minute budget, shared by every authenticated API call,
// counted in one of three ways, since the real API's way is not documented:
//  - fixed: windows of one (scaled) minute aligned to the Unix epoch; a new window
//    starts from zero;
//  - sliding: at most `limit` calls in any window's length that ends now;
//  - bucket: a token bucket refilled at limit per window, holding at most a twelfth
//    of the limit (5 s worth, at least 1): bursts are refused, an even pace is not.
// A refused call uses no budget.
#pragma once

#include "sim/timestamps.hpp"

#include <cstdint>
#include <deque>
#include <optional>
#include <string_view>

namespace klingd::sim {

std::optional<limiter_kind> limiter_kind_named(std::string_view name);
std::string_view name_of(limiter_kind k);

class rate_limiter {
public:
    // limit 0 means unlimited; window is the real length of one window.
    rate_limiter(int limit, duration window, limiter_kind kind = limiter_kind::fixed);

    // Returns false, counting nothing, when the budget is spent at now.
    bool try_acquire(time_point now);
    // When a call refused at now would be taken (the reset time a 429 names).
    time_point reset_at(time_point now) const;

    void set_limit(int limit);
    void set_kind(limiter_kind kind);
    int limit() const { return limit_; }
    limiter_kind kind() const { return kind_; }

private:
    std::int64_t window_index(time_point now) const;
    double bucket_capacity() const;
    void refill(time_point now);

    int limit_;
    duration window_;
    limiter_kind kind_;
    // fixed
    std::int64_t current_ = INT64_MIN;
    int used_ = 0;
    // sliding: the times of the calls taken within the last window
    std::deque<time_point> taken_;
    // bucket
    double tokens_ = 0;
    std::optional<time_point> refilled_at_;
};

} // namespace klingd::sim
