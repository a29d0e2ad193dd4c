// When to poll a submitted request next. Polls go where completion is likely:
// each poll is placed so that the request has a chosen probability of having
// finished since the last one. With budget to spare that probability is low and
// the gap short (quick detection); when the budget is scarce it is high (about
// one poll per job). Never closer than min_poll_interval_s, never further apart
// than max_poll_interval_s (when the budget is scarce, counted from a learned
// model's 1% quantile), and never so late that the result could expire.
#pragma once

#include "core/duration_model.hpp"
#include "core/job.hpp"

#include <optional>

namespace klingd::core {

// How scarce the request budget is, in [0, 1], from how long dispatched work waited
// past its due time. Samples are weighted by the time between them (time constant
// `tau_s`), not counted: a burst of submits that the budget drains in a moment
// gives many samples in no time and must not look like lasting scarcity, while
// work that keeps waiting a poll interval or more drives it to 1 within seconds.
class scarcity_meter {
public:
    // tau_s: the time constant; unit_s: the wait that counts as fully scarce.
    scarcity_meter(double tau_s, double unit_s) : tau_s_(tau_s), unit_s_(unit_s) {}
    void set_scale(double tau_s, double unit_s) {
        tau_s_ = tau_s;
        unit_s_ = unit_s;
    }
    // Work due at `due` was dispatched at `now`.
    double observe(time_point due, time_point now);
    double value() const { return value_; }

private:
    double tau_s_;
    double unit_s_;
    double value_ = 0;
    std::optional<time_point> last_;
};

struct poll_policy {
    double min_interval_s = 1;
    double max_interval_s = 60;
    double retention_s = 3600;
};

class poll_planner {
public:
    explicit poll_planner(poll_policy policy) : policy_(policy) {}
    void set_policy(poll_policy p) { policy_ = p; }

    // scarcity in [0, 1]: 0 when the budget is ample, 1 when requests wait for it.
    void set_scarcity(double s);
    double scarcity() const { return scarcity_; }

    // The next poll of a request submitted at `submitted`, last seen unfinished at
    // `last_seen` (== submitted before the first poll).
    time_point next_poll(const duration_model& model, time_point submitted, time_point last_seen,
                         time_point now) const;

    // The latest time a poll may happen and still leave room to fetch the result.
    time_point last_safe_poll(time_point submitted) const;

private:
    poll_policy policy_;
    double scarcity_ = 0;
};

} // namespace klingd::core
