// The dispatcher's decisions.
#include "core/dispatch_policy.hpp"

#include <algorithm>
#include <cmath>

namespace klingd::core {

namespace {
milliseconds seconds_ms(double s) {
    return milliseconds(static_cast<std::int64_t>(s * 1000));
}
} // namespace

std::size_t automatic_connections(double rpm, double answer_s) {
    double need = std::ceil(std::max(0.0, rpm) / 60 * std::max(0.0, answer_s) * 2);
    return static_cast<std::size_t>(std::clamp(need, 4.0, 64.0));
}

std::size_t automatic_in_flight(double rpm, double run_s) {
    double need = std::ceil(std::max(0.0, rpm) / 3 / 60 * std::max(0.0, run_s) * 1.5);
    return static_cast<std::size_t>(std::clamp(need, 50.0, 10000.0));
}

std::size_t automatic_submits(std::size_t max_requests) {
    return std::max<std::size_t>(1, (max_requests + 1) / 2);
}

milliseconds wake_tick(double min_poll_interval_s) {
    return std::clamp(seconds_ms(min_poll_interval_s / 50), milliseconds(1), milliseconds(10));
}

dispatch_policy::dispatch_policy(dispatch_queue& queue, rate_budget& budget, poll_planner& planner,
                                 submission_gate& gate, dispatch_limits limits)
    : queue_(queue), budget_(budget), planner_(planner), gate_(gate), limits_(limits),
      scarcity_(10 * limits.min_poll_interval_s, limits.min_poll_interval_s) {}

void dispatch_policy::set_limits(dispatch_limits l) {
    limits_ = l;
    scarcity_.set_scale(10 * l.min_poll_interval_s, l.min_poll_interval_s);
}

dispatch_action dispatch_policy::next_action(time_point now, const in_flight_counts& f) {
    queue_.promote(now);
    if (f.downloads < limits_.max_downloads)
        if (auto item = queue_.pop_download())
            return start_download{std::move(*item)};
    bool submits =
        f.submits < limits_.max_submits && gate_.allows(now, f.jobs, limits_.max_in_flight);
    if (auto send = take_budgeted(now, f, submits))
        return std::move(*send);
    return sleep_until{next_wake(now, f, submits)};
}

std::optional<send_request>
dispatch_policy::take_budgeted(time_point now, const in_flight_counts& f, bool submits) {
    if (f.requests >= limits_.max_requests || !queue_.has_budgeted_ready(submits))
        return std::nullopt;
    if (!budget_.try_acquire(now))
        return std::nullopt;
    // Polls this close to their deadline never give way to a submit.
    auto urgent = now + seconds_ms(2 * limits_.max_poll_interval_s);
    auto item = queue_.pop_budgeted(submits, urgent);
    if (!item)
        return std::nullopt;
    // Is the budget the bottleneck? Work that waited for it about as long as a poll
    // interval says so; a burst the budget drains in moments does not. A backlog the
    // budget needs many poll intervals to drain is scarcity at once, before the waits
    // show it (120 submits at 30/min at the start, say).
    double drain_s = static_cast<double>(queue_.ready_budgeted(submits)) * 60 /
                     std::max(1.0, budget_.allowed_rpm());
    double backlog = std::clamp((drain_s / limits_.min_poll_interval_s - 1) / 9, 0.0, 1.0);
    planner_.set_scarcity(std::max(scarcity_.observe(item->not_before, now), backlog));
    if (item->kind == work_kind::submit)
        gate_.on_submit_sent(now);
    return send_request{std::move(*item)};
}

std::optional<time_point> dispatch_policy::next_wake(time_point now, const in_flight_counts& f,
                                                     bool submits) {
    std::optional<time_point> next = queue_.next_due();
    auto consider = [&](time_point at) {
        if (!next || at < *next)
            next = at;
    };
    if (f.requests < limits_.max_requests && queue_.has_budgeted_ready(submits))
        consider(budget_.next_slot());
    if (gate_.stopped() && !gate_.paused() && gate_.next_probe() > now &&
        f.jobs < limits_.max_in_flight && queue_.has_ready_submits())
        consider(gate_.next_probe());
    return next;
}

milliseconds dispatch_policy::sleep_for(time_point at, time_point now) const {
    auto tick = wake_tick(limits_.min_poll_interval_s);
    // At most an hour: a far-off time (no shared slot yet) must not overflow a timer.
    auto wait = std::clamp(std::chrono::ceil<milliseconds>(at - now), milliseconds(1),
                           milliseconds(std::chrono::hours(1)));
    return (wait + tick - milliseconds(1)) / tick * tick;
}

} // namespace klingd::core
