// The dispatcher's decisions, sans I/O: given the work queue, the request budget,
// the submission gate and what is in flight, what to do next at `now`: start a
// download, send a request (result fetches, then polls by deadline, then submits),
// or sleep until a time. The daemon's loop only carries the actions out and says
// when something finished. Owns the budget's consumers' policy: the scarcity the
// poll planner sees (waits and backlog), the urgent-poll horizon, probe timing and
// the rounding of wake-ups to a tick. Pure: time comes in; tests use a manual clock.
#pragma once

#include "core/dispatch_queue.hpp"
#include "core/poll_planner.hpp"
#include "core/rate_budget.hpp"
#include "core/submission_gate.hpp"

#include <optional>
#include <variant>

namespace klingd::core {

struct dispatch_limits {
    std::size_t max_requests = 8;   // API requests at once (api.max_connections)
    std::size_t max_submits = 4;    // submits awaiting their answer (api.max_submits_in_flight)
    std::size_t max_downloads = 4;  // downloads at once
    std::size_t max_in_flight = 50; // jobs submitted and unfinished (jobs.max_in_flight)
    double min_poll_interval_s = 1;
    double max_poll_interval_s = 60;
};

// api.max_connections = 0: enough connections to send at the budget's rate with answers
// taking answer_s (Little's law: rate x answer time), twice that for bursts of slow
// answers; at least 4, at most 64. Connections do not set the pace (the budget does):
// too many cost a few idle sockets, too few cap the rate.
std::size_t automatic_connections(double rpm, double answer_s);

// jobs.max_in_flight = 0: enough jobs submitted and unfinished to spend the budget
// (Little's law: the job rate the budget allows at 3 requests a job, times the run time
// from submission to the result), half again for headroom; at least 50, at most 10,000.
std::size_t automatic_in_flight(double rpm, double run_s);

// api.max_submits_in_flight = 0: half the request connections, at least one. A submit
// whose answer a reset or a kill cuts off has an unknown outcome; fewer at once on the
// wire means fewer lost to one fault, while polls keep the other connections.
std::size_t automatic_submits(std::size_t max_requests);

// What runs now: the daemon's counts.
struct in_flight_counts {
    std::size_t requests = 0;
    std::size_t downloads = 0;
    std::size_t jobs = 0;    // submitting, queued, processing
    std::size_t submits = 0; // of the requests
};

struct start_download {
    dispatch_queue::item item;
};
struct send_request {
    dispatch_queue::item item; // submit, poll or fetch_result; a submit has passed the gate
};
struct sleep_until {
    std::optional<time_point> at; // nullopt: until woken (nothing is due)
};
using dispatch_action = std::variant<start_download, send_request, sleep_until>;

// Wake-ups are rounded up to a tick (a fiftieth of min_poll_interval_s, 1 to 10 ms),
// so polls due close together go out on one wake-up, not one each; the budget lets
// a send come that much before its even slot, so a wake-up sends all the tick accrued.
milliseconds wake_tick(double min_poll_interval_s);

class dispatch_policy {
public:
    dispatch_policy(dispatch_queue& queue, rate_budget& budget, poll_planner& planner,
                    submission_gate& gate, dispatch_limits limits);
    void set_limits(dispatch_limits l);
    const dispatch_limits& limits() const { return limits_; }

    dispatch_action next_action(time_point now, const in_flight_counts& f);
    // How long to sleep for an action's `at` (at least 1 ms, rounded up to the tick).
    milliseconds sleep_for(time_point at, time_point now) const;

private:
    std::optional<send_request> take_budgeted(time_point now, const in_flight_counts& f,
                                              bool submits);
    std::optional<time_point> next_wake(time_point now, const in_flight_counts& f, bool submits);

    dispatch_queue& queue_;
    rate_budget& budget_;
    poll_planner& planner_;
    submission_gate& gate_;
    dispatch_limits limits_;
    scarcity_meter scarcity_;
};

} // namespace klingd::core
