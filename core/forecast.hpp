// When the jobs waiting now should be done, and what they will cost: a small queueing
// estimate from the budget, the learned run times and the in-flight cap, and how good such
// an estimate turned out to be (the one made an hour before a backlog drained, against the
// time it drained). Pure: the daemon feeds it counts and times.
#pragma once

#include "core/job.hpp"

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>

namespace klingd::core {

struct forecast_input {
    std::int64_t waiting = 0;       // not yet accepted by the API (pending, submitting)
    std::int64_t running = 0;       // accepted, not finished (queued, processing)
    double allowed_rpm = 60;        // the request rate klingd allows itself now
    double requests_per_job = 3;    // submit + polls + result, learned
    double run_s = 60;              // a job's run time at the API (the slowest model's median)
    std::size_t max_in_flight = 50; // submitted, unfinished jobs at once
};

struct forecast {
    std::int64_t jobs_left = 0;
    double requests_left = 0;
    double seconds_left = 0; // from now until the last of them is done
    // What limits it: "budget" (requests a minute), "run time" (jobs in flight and how long
    // each runs), or "" when nothing is left.
    std::string bound;
};

// The estimate: throughput is the smaller of what the budget allows (allowed_rpm /
// requests_per_job jobs a minute) and what the in-flight cap allows (max_in_flight / run_s
// jobs a second, Little's law); the last job still runs run_s after it is sent.
forecast make_forecast(const forecast_input& in);

// Forecasts made over time, and how the one made about an hour before a backlog drained
// compared with the time it drained.
class forecast_tracker {
public:
    struct accuracy {
        time_point made_at;      // when the forecast compared was made
        time_point predicted_at; // when it said the backlog would be done
        time_point drained_at;   // when it was
        std::int64_t jobs_then = 0;
        double error_s() const; // drained_at - predicted_at: positive when it took longer
    };

    // A forecast made at `at` (wall clock). When jobs_left is 0 and the last one recorded
    // was not, the backlog drained now: the forecast made closest to an hour before (or
    // the backlog's first, when it lasted less) is compared with now.
    void record(time_point at, const forecast& f);
    const std::optional<accuracy>& last_drain() const { return last_; }

private:
    struct snapshot {
        time_point at;
        time_point done_at;
        std::int64_t jobs_left;
    };
    std::deque<snapshot> history_; // of the current backlog, at most 3 hours
    std::optional<accuracy> last_;
};

} // namespace klingd::core
