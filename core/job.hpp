// The job: what a user asked for (model, params, priority) and where it stands
// (state, request id, counters, outputs). Plain data; transitions live in lifecycle.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace klingd::core {

// Wall-clock time with millisecond resolution: it is persisted, and the API's
// retention window counts from submission in wall time.
using time_point = std::chrono::time_point<std::chrono::system_clock, std::chrono::milliseconds>;
using std::chrono::milliseconds;

enum class job_state {
    pending,
    submitting,
    queued,
    processing,
    completed,
    failed,
    expired,
    cancelled
};

// Every state, in the contract's order.
inline constexpr job_state all_job_states[] = {
    job_state::pending,   job_state::submitting, job_state::queued,  job_state::processing,
    job_state::completed, job_state::failed,     job_state::expired, job_state::cancelled};

std::string_view to_string(job_state s);
// "pending, submitting, ..., cancelled": for messages that list them.
std::string job_state_names();
// nullopt when the name is not a state.
std::optional<job_state> parse_job_state(std::string_view name);
bool is_terminal(job_state s);

// Where a non-terminal job is inside its state, beyond what the contract's states say.
enum class job_phase : std::uint8_t {
    none,         // pending, or waiting for the next poll
    result_due,   // the API reported COMPLETED: fetch the result
    download_due, // the result body is stored: download its media
};

struct job {
    std::string id;
    std::string model;
    std::string
        params; // the JSON body of POST /v2/{model}; may be dropped from memory once submitted
    int priority = 0;

    job_state state = job_state::pending;
    job_phase phase = job_phase::none;
    std::optional<std::string> request_id;
    std::optional<std::string> status_url;
    std::optional<std::string> response_url;
    std::optional<std::string> error;
    std::vector<std::string> outputs;
    std::optional<std::string> result; // the final result body, kept until its media are on disk

    time_point created_at{};
    time_point updated_at{};
    std::optional<time_point>
        submitted_at; // when the API accepted the request (retention counts from here)
    std::optional<time_point> remote_done_at; // estimate of when the API finished the request
    std::optional<time_point> finished_at;    // when the job reached a terminal state

    int attempts = 0;          // submits sent for this job, all retries included
    int polls = 0;             // status polls sent for the current request
    int failures = 0;          // consecutive transient failures of the current step (not persisted)
    time_point last_poll_at{}; // when the last "not done yet" answer was seen (not persisted)
    // In a cluster: the node that holds the job's claim now, or that finished it; none
    // while pending and on a single host. Written by claims, never by save.
    std::optional<std::string> node;
};

// The job with every time moved by d (between the daemon's monotonic time and the wall clock).
job shifted(job j, milliseconds d);

} // namespace klingd::core
