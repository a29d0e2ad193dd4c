// Conditional-quantile poll placement, clamped by the policy and the retention deadline.
#include "core/poll_planner.hpp"

#include <algorithm>
#include <cmath>

namespace klingd::core {

namespace {
using seconds_d = std::chrono::duration<double>;

// A model is learned once the prior weighs no more than this (20 samples to its 5).
constexpr double learned_prior_share = 0.2;
// The first poll's exception to max_interval_s needs lasting scarcity: none below
// 0.95, in full at 1 (a backlog the budget needs many poll intervals to drain).
// A spell of scarcity with budget to spare (the ample-budget benchmark from a warm
// database) must not put first polls past it: it cost p95 detection delays of 2.4-3.1 s
// against 1.9 s, and 2.0 s with the exception from 0.8.
constexpr double extension_from = 0.95;

milliseconds to_ms(double s) {
    return milliseconds(static_cast<std::int64_t>(std::llround(s * 1000)));
}
} // namespace

double scarcity_meter::observe(time_point due, time_point now) {
    double waited = std::max(0.0, seconds_d(now - due).count());
    double sample = unit_s_ > 0 ? std::min(1.0, waited / unit_s_) : 1.0;
    double dt = last_ ? std::max(0.0, seconds_d(now - *last_).count()) : tau_s_;
    if (!last_ || now > *last_)
        last_ = now;
    double alpha = tau_s_ > 0 ? 1 - std::exp(-dt / tau_s_) : 1.0;
    // A sample always moves the value a little, so a lone long wait is not ignored.
    alpha = std::max(alpha, 0.001);
    value_ += alpha * (sample - value_);
    return value_;
}

void poll_planner::set_scarcity(double s) {
    scarcity_ = std::clamp(s, 0.0, 1.0);
}

time_point poll_planner::last_safe_poll(time_point submitted) const {
    // Room for a poll's answer and a result fetch before the API forgets the request.
    double margin = std::max(policy_.max_interval_s, policy_.retention_s * 0.05);
    margin = std::min(margin, policy_.retention_s * 0.25);
    return submitted + to_ms(policy_.retention_s - margin);
}

time_point poll_planner::next_poll(const duration_model& model, time_point submitted,
                                   time_point last_seen, time_point now) const {
    double elapsed = std::max(0.0, seconds_d(std::max(last_seen, submitted) - submitted).count());
    // The chance that the request finishes between this poll and the next.
    double p = 0.2 + 0.75 * scarcity_;
    double f = model.cdf(elapsed);
    double target_f = f + p * (1 - f);
    double next = target_f >= 0.9999 ? elapsed + policy_.max_interval_s : model.quantile(target_f);
    // Before `start`, polls are wasted: almost no request is done yet. The wide prior's 8%
    // quantile is about the 1% quantile of what the API shows; a learned fit is narrower, so
    // it starts from its own 2% quantile.
    double start_low = 0.02 + 0.06 * model.prior_share();
    double start = model.quantile(start_low + (0.92 - start_low) * scarcity_);
    if (elapsed < start) {
        next = std::min(next, start);
    } else {
        // In the likely region, with budget to spare, keep the gap (and so the detection delay)
        // short.
        // The gap widens with the square of scarcity: a little pressure on the budget
        // must not cost detection delay out of proportion.
        // Twice min_interval_s apart, less a fiftieth (the most the dispatcher rounds a
        // wake-up up by): a request that finishes is seen within 2 x min_interval_s.
        double ample_cap = policy_.min_interval_s * (2 - 1.0 / 50);
        double cap = ample_cap + (policy_.max_interval_s - ample_cap) * scarcity_ * scarcity_;
        next = std::min(next, elapsed + cap);
    }
    // Never unpolled longer than max_interval_s; but when the budget is lastingly scarce
    // and the model's run times are learned (20 completions or more), a request last seen
    // before the time its fastest 1% finish may wait longer, up to what was left until
    // then (at full scarcity max_interval_s counts from that time: before it nothing
    // waits to be seen). Without this the first poll of a 58 s job came at 60 s, near the median,
    // and by the fitted run times about 45% of jobs needed a second poll however scarce the budget.
    double longest = policy_.max_interval_s;
    if (model.prior_share() <= learned_prior_share) {
        double earliest = model.quantile(0.01);
        if (elapsed < earliest)
            longest += std::clamp((scarcity_ - extension_from) / (1 - extension_from), 0.0, 1.0) *
                       (earliest - elapsed);
    }
    double gap = std::clamp(next - elapsed, policy_.min_interval_s, longest);
    time_point at = std::max(last_seen, submitted) + to_ms(gap);
    at = std::min(at, last_safe_poll(submitted));
    // Past the last safe poll too, polls keep min_interval_s apart: one job near its
    // deadline must not take every slot of the budget.
    at = std::max(at, std::max(last_seen, submitted) + to_ms(policy_.min_interval_s));
    return std::max(at, now);
}

} // namespace klingd::core
