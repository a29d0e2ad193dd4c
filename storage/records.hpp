// What the storage backends exchange with the daemon: history lines, list filters,
// insert outcomes and a job's change with the history written along.
#pragma once

#include "core/job.hpp"

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace klingd::storage {

struct history_entry {
    core::time_point at;
    std::string state;
    std::string note;
    std::optional<std::string> request_id;
};

struct job_filter {
    std::optional<core::job_state> state;
    std::optional<std::string> model;
    std::size_t limit = 1000;
    std::optional<std::string> after; // cursor: the id of the last job of the previous page
};

enum class insert_outcome {
    inserted,
    same_content, // the id exists with the same content: a no-op
    conflict,     // the id exists with other content
};

// A job's mutable fields and the history lines written along, in order.
// A submission's cost, counted when its "submitting" is committed (in the same
// transaction, after the limits are checked). Money in micro-units (1e-6 of the unit the
// prices are given in): sums of prices like 0.035 stay exact.
struct spend_charge {
    std::string model;
    std::int64_t micro = 0;
    std::int64_t attempt = 0; // the job's attempt number: one charge per attempt
    core::time_point at{};    // wall clock
    // The UTC day and month that `at` falls in begin here (wall clock).
    core::time_point day_start{};
    core::time_point month_start{};
    std::int64_t daily_limit = 0; // micro-units; 0: none
    std::int64_t monthly_limit = 0;
};

// Which limit refused a charge (the error's detail says it in words).
enum class spend_limit_kind { daily, monthly };

// A job's arrival at a final state, for the completion hooks: recorded in the commit of
// that state (an outbox), one delivery per target. Its id (the webhook-id) is given by
// the storage: "<job id>-<n>-<state>", n counting the job's events from 1.
struct hook_event {
    std::string type;                 // "job.completed", "job.failed", ...
    std::string state;                // "completed", ...
    std::string payload;              // the event as JSON, as it is delivered
    std::vector<std::string> targets; // "command", "webhook"
    core::time_point at{};            // wall clock: due from then
};

// One target's delivery of an event, and where it stands.
struct hook_delivery {
    std::string event_id;
    std::string target; // "command" or "webhook"
    std::string job_id;
    std::string type;
    std::string payload;
    int attempts = 0;
    std::string outcome = "pending"; // pending, delivered, given_up
    std::optional<std::string> last_error;
    core::time_point next_at{}; // wall clock
    std::string node;           // the node that finished the job ("" on a single host)
};

struct job_change {
    core::job j;
    std::vector<history_entry> history;
    // "submitting" of a priced model: counted, or the whole change is refused with
    // errc::spend_limit (detail: "<daily_limit|monthly_limit> <spent today> <spent this
    // month>", micro-units) and nothing is written.
    std::optional<spend_charge> charge;
    // The attempt whose charge is taken back: it provably created nothing.
    std::optional<std::int64_t> refund_attempt;
    // The job reached a final state: its hooks' deliveries, written in the same commit.
    std::optional<hook_event> event;
};

// What has been spent in a UTC day and month (micro-units), by every node.
struct spend_totals {
    std::int64_t today = 0;
    std::int64_t month = 0;
};

// (state, model) -> number of jobs.
using state_model_counts = std::map<std::pair<std::string, std::string>, std::int64_t>;

// A job's output paths as both backends store them: a JSON array of strings.
std::string outputs_json(const std::vector<std::string>& outputs);

// The SHA-256 (hex) of a job's content (model, params, priority): what a pruned job's
// tombstone keeps, to tell a resubmission of the same job from another job with its id.
std::string content_digest(const std::string& model, const std::string& params,
                           std::int64_t priority);
std::vector<std::string> parse_outputs(const std::string& text);

} // namespace klingd::storage
