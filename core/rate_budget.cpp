// Pacing, 429 blocking and AIMD of the allowed request rate.
#include "core/rate_budget.hpp"

#include <algorithm>
#include <cmath>

namespace klingd::core {

namespace {
constexpr double decrease_factor = 0.8;
constexpr double min_rpm = 0.5;
// Quiet time after a decrease before the rate starts to grow again, and the
// growth: 2% of the configured rate per second of quiet.
constexpr auto quiet_before_raise = std::chrono::seconds(20);
constexpr double raise_per_second = 0.02;
constexpr auto max_block = std::chrono::minutes(5);
} // namespace

rate_budget::rate_budget(double configured_rpm, milliseconds tolerance)
    : configured_(std::max(configured_rpm, min_rpm)), allowed_(configured_),
      tolerance_(std::max(tolerance, milliseconds(0))) {}

void rate_budget::reconfigure(double configured_rpm, milliseconds tolerance) {
    tolerance_ = std::max(tolerance, milliseconds(0));
    double old = configured_;
    configured_ = std::max(configured_rpm, min_rpm);
    // keep the learned reduction in proportion
    allowed_ = std::clamp(allowed_ * configured_ / old, min_rpm, configured_);
}

milliseconds rate_budget::gap() const {
    return milliseconds(static_cast<std::int64_t>(std::ceil(60000.0 / allowed_)));
}

time_point rate_budget::window_slot() const {
    // Early sends (the tolerance) must not add up to more than the rate in any minute.
    auto limit = static_cast<std::size_t>(std::max(1.0, std::floor(allowed_)));
    if (sends_.size() < limit)
        return time_point::min();
    return sends_[sends_.size() - limit] + std::chrono::minutes(1);
}

time_point rate_budget::next_slot() const {
    time_point t = blocked_until_;
    if (last_slot_us_) {
        double earliest_us =
            *last_slot_us_ + interval_us() - static_cast<double>(tolerance_.count()) * 1000;
        t = std::max(
            t, time_point{milliseconds(static_cast<std::int64_t>(std::ceil(earliest_us / 1000)))});
    }
    return std::max(t, window_slot());
}

bool rate_budget::try_acquire(time_point now) {
    used_last_minute(now);
    if (now < next_slot())
        return false;
    double now_us = static_cast<double>(now.time_since_epoch().count()) * 1000;
    last_slot_us_ = last_slot_us_ ? std::max(*last_slot_us_ + interval_us(), now_us) : now_us;
    sends_.push_back(now);
    return true;
}

void rate_budget::on_rate_limited(time_point now, std::optional<time_point> until,
                                  double jitter01) {
    time_point resume;
    if (until) {
        consecutive_unhinted_ = 0;
        // Honoured up to a bound: a longer block would let completed results expire unfetched.
        resume = std::min(*until, now + max_block);
    } else {
        // Full jitter: uniform in [gap, min(60 s, gap * 2^n)].
        ++consecutive_unhinted_;
        double cap_ms = std::min(60000.0, static_cast<double>(gap().count()) *
                                              std::pow(2.0, std::min(consecutive_unhinted_, 16)));
        double base_ms = static_cast<double>(gap().count());
        resume = now + milliseconds(static_cast<std::int64_t>(
                           base_ms + jitter01 * std::max(0.0, cap_ms - base_ms)));
    }
    blocked_until_ = std::max(blocked_until_, resume);
    // One decrease per episode: the answers of requests already in flight do not count again.
    if (now >= last_decrease_ + gap() * 2 || last_decrease_ == time_point{}) {
        allowed_ = std::max(min_rpm, allowed_ * decrease_factor);
        last_decrease_ = now;
    }
    last_raise_ = now;
}

void rate_budget::on_answer(time_point now) {
    if (allowed_ >= configured_) {
        last_raise_ = now;
        return;
    }
    if (now < last_decrease_ + quiet_before_raise) {
        last_raise_ = std::max(last_raise_, now);
        return;
    }
    auto since = std::max(last_raise_, last_decrease_ + quiet_before_raise);
    double secs = std::chrono::duration<double>(now - since).count();
    if (secs <= 0)
        return;
    allowed_ = std::min(configured_, allowed_ + configured_ * raise_per_second * secs);
    last_raise_ = now;
}

std::size_t rate_budget::used_last_minute(time_point now) {
    while (!sends_.empty() && sends_.front() <= now - std::chrono::minutes(1))
        sends_.pop_front();
    return sends_.size();
}

} // namespace klingd::core
