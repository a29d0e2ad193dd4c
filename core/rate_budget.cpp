// Pacing, 429 blocking and AIMD of the allowed request rate.
#include "core/rate_budget.hpp"

#include <algorithm>
#include <cmath>

namespace klingd::core {

namespace {
constexpr double decrease_factor = 0.8;
constexpr double min_rpm = 0.5;
// The way back up after a decrease: a sixth of a minute's answers without a 429
// (at least 10), or 20 s, first; then per answer 0.5% of the configured rate or 2%
// of it per second since the last raise, whichever is more (from 80% to 100% in 40
// answers at most; low rates, with few answers, recover by the clock).
constexpr double quiet_share_of_a_minute = 1.0 / 6;
constexpr double min_quiet_answers = 10;
constexpr auto quiet_time = std::chrono::seconds(20);
constexpr double raise_per_answer = 0.005;
constexpr double raise_per_second = 0.02;
// A second episode further apart than this is not evidence about the limit.
constexpr auto evidence_span = std::chrono::minutes(2);
constexpr auto max_block = std::chrono::minutes(5);
} // namespace

rate_budget::rate_budget(double configured_rpm, milliseconds tolerance, double margin)
    : configured_(std::max(configured_rpm, min_rpm)), allowed_(configured_),
      tolerance_(std::max(tolerance, milliseconds(0))), margin_(std::clamp(margin, 0.0, 0.5)) {}

void rate_budget::reconfigure(double configured_rpm, milliseconds tolerance) {
    tolerance_ = std::max(tolerance, milliseconds(0));
    double old = configured_;
    bool full = allowed_ >= old;
    configured_ = std::max(configured_rpm, min_rpm);
    // keep the learned reduction in proportion (and a full rate exactly full)
    allowed_ = full ? configured_ : std::clamp(allowed_ * configured_ / old, min_rpm, configured_);
}

milliseconds rate_budget::gap() const {
    return milliseconds(static_cast<std::int64_t>(std::ceil(60000.0 / paced_rpm())));
}

std::size_t rate_budget::window_sends() const {
    return static_cast<std::size_t>(std::max(1.0, std::ceil(allowed_ - 1e-9)));
}

milliseconds rate_budget::window() const {
    // The time the allowed rate, less the margin, needs for window_sends() sends: a
    // minute stretched by the margin at a whole-number rate, longer at a fractional one.
    return milliseconds(static_cast<std::int64_t>(
        std::ceil(static_cast<double>(window_sends()) * 60000.0 / paced_rpm())));
}

time_point rate_budget::window_slot() const {
    // Early sends (the tolerance) must not add up to more than the paced rate over
    // window(). A whole number of sends, rounded up, over the time the paced rate needs
    // for them: rounding down cost 20% at 5/min, and more at fractional rates.
    auto limit = window_sends();
    if (sends_.size() < limit)
        return time_point::min();
    return sends_[sends_.size() - limit] + window();
}

time_point rate_budget::next_slot() const {
    time_point t = blocked_until_;
    if (shared_) {
        // Without a slot of the shared schedule: far off (a reservation wakes the dispatcher).
        auto far = time_point{std::chrono::hours(24 * 365 * 1000)};
        t = std::max(t, slots_.empty() ? far : slots_.front() - tolerance_);
    }
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
    drop_stale_slots(now);
    if (now < next_slot())
        return false;
    if (shared_)
        slots_.pop_front();
    double now_us = static_cast<double>(now.time_since_epoch().count()) * 1000;
    last_slot_us_ = last_slot_us_ ? std::max(*last_slot_us_ + interval_us(), now_us) : now_us;
    sends_.push_back(now);
    ++sends_since_episode_;
    return true;
}

void rate_budget::on_rate_limited(time_point now, std::optional<time_point> until, double jitter01,
                                  std::optional<time_point> sent_at) {
    // Answers of requests that were in flight when the episode began belong to it, as do
    // 429s while sends are blocked and 429s naming the same reset time as the last (a
    // clock running ahead of the API's sees that time pass before the API does).
    bool same_episode =
        episode_start_ && (now < blocked_until_ || sent_at.value_or(now) <= *episode_start_ ||
                           (until && last_until_ && *until <= *last_until_));
    if (until && !same_episode)
        last_until_ = until;
    // A reset time not after now (Retry-After: 0, a clock skewed against ours) says
    // nothing usable: it is treated as no header (a growing backoff).
    if (until && *until <= now)
        until.reset();
    // Evidence that the true limit is below the rate allowed: no reset time to honour
    // (the API may count in a way that cannot be paced against), or a second episode
    // within 2 minutes of the end of the last one's block (a long block is no quiet
    // time) and within a minute's worth of sends of its start. A new episode comes at
    // or after the end of the last block, so blocked_until_ is still that end here.
    bool again_soon = !same_episode && episode_start_ && now - blocked_until_ < evidence_span &&
                      static_cast<double>(sends_since_episode_) < minute_of_sends();
    time_point resume;
    if (until) {
        consecutive_unhinted_ = 0;
        // Honoured up to a bound: a longer block would let completed results expire unfetched.
        resume = std::min(*until, now + max_block);
    } else {
        // Full jitter: uniform in [gap, min(60 s, gap * 2^n)], n growing once per episode
        // (and back to 0 when the way up opens).
        if (!same_episode)
            ++consecutive_unhinted_;
        double cap_ms = std::min(60000.0, static_cast<double>(gap().count()) *
                                              std::pow(2.0, std::min(consecutive_unhinted_, 16)));
        double base_ms = static_cast<double>(gap().count());
        resume = now + milliseconds(static_cast<std::int64_t>(
                           base_ms + jitter01 * std::max(0.0, cap_ms - base_ms)));
    }
    blocked_until_ = std::max(blocked_until_, resume);
    if (same_episode)
        return;
    episode_start_ = now;
    sends_since_episode_ = 0;
    answers_since_episode_ = 0; // the quiet run starts again
    recovering_ = false;
    if (!until || again_soon)
        allowed_ = std::max(min_rpm, allowed_ * decrease_factor);
}

void rate_budget::on_answer(time_point now) {
    ++answers_since_episode_;
    bool quiet_by_count = static_cast<double>(answers_since_episode_) >=
                          std::max(min_quiet_answers, allowed_ * quiet_share_of_a_minute);
    // Quiet time counts from the end of the block: time spent blocked proves nothing.
    bool quiet_by_time = now - blocked_until_ >= quiet_time;
    if (!quiet_by_count && !quiet_by_time)
        return;
    consecutive_unhinted_ = 0; // the backoff starts small again
    if (allowed_ >= configured_)
        return;
    // The quiet spell itself earns nothing by the clock: it only opens the way up; and
    // idle time between answers counts for at most a gap (one answer after an idle
    // spell is one step, not a jump to the full rate).
    double secs = recovering_ ? std::clamp(std::chrono::duration<double>(now - last_raise_).count(),
                                           0.0, std::chrono::duration<double>(gap()).count())
                              : 0.0;
    recovering_ = true;
    double step = configured_ * std::max(raise_per_answer, raise_per_second * secs);
    allowed_ = std::min(configured_, allowed_ + step);
    last_raise_ = now;
}

std::size_t rate_budget::used_last_minute(time_point now) {
    // Kept: the last window's sends, and never fewer than the guard may need if the
    // allowed rate rises to the configured one.
    auto keep = static_cast<std::size_t>(std::ceil(configured_));
    while (sends_.size() > keep && sends_.front() <= now - window())
        sends_.pop_front();
    auto from = std::upper_bound(sends_.begin(), sends_.end(), now - std::chrono::minutes(1));
    return static_cast<std::size_t>(sends_.end() - from);
}

void rate_budget::use_shared_slots(bool on) {
    shared_ = on;
    slots_.clear();
}

void rate_budget::drop_stale_slots(time_point now) {
    // A slot is used within the tolerance of its time, early or late, never later: a slot
    // used a whole interval late by one node while another uses the next on time would
    // put one request more than the budget into some minute. With the shared pace 1%
    // under the budget, sends within 0.3 s of their slots keep every minute within it:
    // a slot is used up to the tolerance early (10 ms at most) and 250 ms late.
    auto stale = now - std::max(tolerance_, milliseconds(250));
    while (!slots_.empty() && slots_.front() < stale)
        slots_.pop_front();
}

void rate_budget::add_shared_slots(time_point first, double interval_ms, int count) {
    slot_interval_ms_ = interval_ms;
    for (int i = 0; i < count; ++i) {
        auto at = first + milliseconds(static_cast<std::int64_t>(std::floor(interval_ms * i)));
        if (at >= blocked_until_ && (slots_.empty() || at > slots_.back()))
            slots_.push_back(at);
    }
}

void rate_budget::hold_until(time_point until) {
    blocked_until_ = std::max(blocked_until_, until);
    while (!slots_.empty() && slots_.front() < blocked_until_)
        slots_.pop_front();
}

void rate_budget::adopt_allowed(double rpm) {
    allowed_ = std::clamp(rpm, min_rpm, configured_);
}

} // namespace klingd::core
