// Request counting for the simulated account: fixed windows, a sliding window, or
// a token bucket.
#include "sim/rate_limiter.hpp"

#include <algorithm>
#include <cmath>

namespace klingd::sim {

std::optional<limiter_kind> limiter_kind_named(std::string_view name) {
    if (name == "fixed")
        return limiter_kind::fixed;
    if (name == "sliding")
        return limiter_kind::sliding;
    if (name == "bucket")
        return limiter_kind::bucket;
    return std::nullopt;
}

std::string_view name_of(limiter_kind k) {
    switch (k) {
    case limiter_kind::sliding:
        return "sliding";
    case limiter_kind::bucket:
        return "bucket";
    default:
        return "fixed";
    }
}

rate_limiter::rate_limiter(int limit, duration window, limiter_kind kind)
    : limit_(limit), window_(std::max(window, duration(1))), kind_(kind) {}

void rate_limiter::set_limit(int limit) {
    limit_ = limit;
    tokens_ = std::min(tokens_, bucket_capacity());
}

void rate_limiter::set_kind(limiter_kind kind) {
    if (kind == kind_)
        return;
    kind_ = kind;
    current_ = INT64_MIN;
    used_ = 0;
    taken_.clear();
    refilled_at_.reset();
}

std::int64_t rate_limiter::window_index(time_point now) const {
    auto since = std::chrono::duration_cast<duration>(now.time_since_epoch());
    auto q = since / window_;
    return (since % window_ < duration::zero()) ? q - 1 : q;
}

double rate_limiter::bucket_capacity() const {
    return std::max(1.0, std::floor(limit_ / 12.0));
}

void rate_limiter::refill(time_point now) {
    if (!refilled_at_) { // a new account starts full
        tokens_ = bucket_capacity();
        refilled_at_ = now;
        return;
    }
    if (now <= *refilled_at_)
        return;
    double per_ns = static_cast<double>(limit_) / static_cast<double>(window_.count());
    tokens_ = std::min(bucket_capacity(),
                       tokens_ + per_ns * static_cast<double>((now - *refilled_at_).count()));
    refilled_at_ = now;
}

bool rate_limiter::try_acquire(time_point now) {
    if (limit_ <= 0)
        return true;
    switch (kind_) {
    case limiter_kind::fixed: {
        auto index = window_index(now);
        if (index != current_) {
            current_ = index;
            used_ = 0;
        }
        if (used_ >= limit_)
            return false;
        ++used_;
        return true;
    }
    case limiter_kind::sliding:
        while (!taken_.empty() && now - taken_.front() >= window_)
            taken_.pop_front();
        if (taken_.size() >= static_cast<std::size_t>(limit_))
            return false;
        taken_.push_back(now);
        return true;
    case limiter_kind::bucket:
        refill(now);
        if (tokens_ < 1)
            return false;
        tokens_ -= 1;
        return true;
    }
    return true;
}

time_point rate_limiter::reset_at(time_point now) const {
    switch (kind_) {
    case limiter_kind::sliding:
        if (limit_ > 0 && taken_.size() >= static_cast<std::size_t>(limit_))
            return std::max(now,
                            taken_[taken_.size() - static_cast<std::size_t>(limit_)] + window_);
        return now;
    case limiter_kind::bucket: {
        if (limit_ <= 0 || tokens_ >= 1)
            return now;
        double per_ns = static_cast<double>(limit_) / static_cast<double>(window_.count());
        auto wait = duration(static_cast<std::int64_t>(std::ceil((1 - tokens_) / per_ns)));
        return std::max(now, refilled_at_.value_or(now) + wait);
    }
    default: {
        auto end = window_ * (window_index(now) + 1);
        return time_point(std::chrono::duration_cast<time_point::duration>(end));
    }
    }
}

} // namespace klingd::sim
