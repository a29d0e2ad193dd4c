#include "core/forecast.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

namespace klingd::core {

forecast make_forecast(const forecast_input& in) {
    forecast f;
    f.jobs_left = std::max<std::int64_t>(0, in.waiting) + std::max<std::int64_t>(0, in.running);
    if (f.jobs_left == 0)
        return f;
    double per_job = std::max(1.0, in.requests_per_job);
    double run_s = std::max(0.0, in.run_s);
    // The running ones were submitted already: one request fewer each.
    f.requests_left =
        static_cast<double>(std::max<std::int64_t>(0, in.waiting)) * per_job +
        static_cast<double>(std::max<std::int64_t>(0, in.running)) * std::max(0.0, per_job - 1);
    double budget_s = in.allowed_rpm > 0 ? f.requests_left / (in.allowed_rpm / 60.0)
                                         : std::numeric_limits<double>::infinity();
    double slots = static_cast<double>(std::max<std::size_t>(1, in.max_in_flight));
    // Jobs pass through the slots at slots / run_s a second; the last one sent still runs.
    double flow_s = run_s > 0 ? static_cast<double>(f.jobs_left) / (slots / run_s) : 0;
    if (budget_s >= flow_s) {
        f.bound = "budget";
        f.seconds_left = budget_s + (in.waiting > 0 ? run_s : 0);
    } else {
        f.bound = "run time";
        f.seconds_left = flow_s + (in.waiting > 0 ? run_s : 0);
    }
    if (in.waiting == 0) // only running ones: they end within about a run time
        f.seconds_left = std::max(budget_s, std::min(flow_s, run_s));
    return f;
}

double forecast_tracker::accuracy::error_s() const {
    return std::chrono::duration<double>(drained_at - predicted_at).count();
}

void forecast_tracker::record(time_point at, const forecast& f) {
    if (f.jobs_left == 0) {
        if (!history_.empty()) {
            // Drained: the forecast made closest to an hour ago.
            auto target = at - std::chrono::hours(1);
            const snapshot* best = &history_.front();
            for (auto& s : history_)
                if (std::chrono::abs(s.at - target) < std::chrono::abs(best->at - target))
                    best = &s;
            last_ = accuracy{best->at, best->done_at, at, best->jobs_left};
            history_.clear();
        }
        return;
    }
    if (!std::isfinite(f.seconds_left))
        return; // no budget: no time to forecast
    auto done = at + std::chrono::duration_cast<milliseconds>(
                         std::chrono::duration<double>(f.seconds_left));
    history_.push_back({at, done, f.jobs_left});
    while (!history_.empty() && at - history_.front().at > std::chrono::hours(3))
        history_.pop_front();
}

} // namespace klingd::core
