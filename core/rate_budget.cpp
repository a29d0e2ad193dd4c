// Pacing, 429 blocking and AIMD of the allowed request rate.
#include "core/rate_budget.hpp"

#include <algorithm>
#include <cmath>

namespace klingd::core {

namespace {
constexpr double decrease_factor = 0.8;
constexpr double min_rpm = 0.5;
// The way back up after a decrease: a sixth of a minute's sends without a 429
// first, then 0.5% of the configured rate per answer (from 80% to 100% in 40).
constexpr double quiet_share_of_a_minute = 1.0 / 6;
constexpr double raise_per_answer = 0.005;
constexpr auto max_block = std::chrono::minutes(5);
} // namespace

rate_budget::rate_budget(double configured_rpm, milliseconds tolerance, double margin)
    : configured_(std::max(configured_rpm, min_rpm)), allowed_(configured_),
      tolerance_(std::max(tolerance, milliseconds(0))), margin_(std::clamp(margin, 0.0, 0.5)) {}

void rate_budget::reconfigure(double configured_rpm, milliseconds tolerance) {
    tolerance_ = std::max(tolerance, milliseconds(0));
    double old = configured_;
    configured_ = std::max(configured_rpm, min_rpm);
    // keep the learned reduction in proportion
    allowed_ = std::clamp(allowed_ * configured_ / old, min_rpm, configured_);
}

milliseconds rate_budget::gap() const {
    return milliseconds(static_cast<std::int64_t>(std::ceil(60000.0 / paced_rpm())));
}

time_point rate_budget::window_slot() const {
    // Early sends (the tolerance) must not add up to more than the rate in any minute.
    auto limit = static_cast<std::size_t>(std::max(1.0, std::floor(paced_rpm())));
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
    ++sends_since_episode_;
    return true;
}

void rate_budget::on_rate_limited(time_point now, std::optional<time_point> until, double jitter01,
                                  std::optional<time_point> sent_at) {
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
    // Answers of requests that were in flight when the episode began belong to it.
    bool same_episode =
        episode_start_ && (now < blocked_until_ || sent_at.value_or(now) <= *episode_start_);
    blocked_until_ = std::max(blocked_until_, resume);
    if (same_episode)
        return;
    // Evidence that the true limit is below the rate allowed: no reset time to honour
    // (the API may count in a way that cannot be paced against), or a second episode
    // within a minute's worth of sends after the last one.
    bool again_soon =
        episode_start_ && static_cast<double>(sends_since_episode_) < minute_of_sends();
    episode_start_ = now;
    sends_since_episode_ = 0;
    if (!until || again_soon) {
        allowed_ = std::max(min_rpm, allowed_ * decrease_factor);
        answers_since_decrease_ = 0;
    }
}

void rate_budget::on_answer(time_point) {
    if (allowed_ >= configured_)
        return;
    ++answers_since_decrease_;
    if (static_cast<double>(answers_since_decrease_) < minute_of_sends() * quiet_share_of_a_minute)
        return;
    allowed_ = std::min(configured_, allowed_ + configured_ * raise_per_answer);
}

std::size_t rate_budget::used_last_minute(time_point now) {
    while (!sends_.empty() && sends_.front() <= now - std::chrono::minutes(1))
        sends_.pop_front();
    return sends_.size();
}

} // namespace klingd::core
