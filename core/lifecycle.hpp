// The job lifecycle as a pure function: (job, event, now, context) -> transition.
// The daemon executes what a transition asks (persist, send, arm a timer,
// download) and feeds each outcome back as an event. No I/O, no clock reads.
#pragma once

#include "core/api_answer.hpp"
#include "core/duration_model.hpp"
#include "core/job.hpp"
#include "core/poll_planner.hpp"

#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace klingd::core {

struct lifecycle_context {
    double retention_s = 3600;
    bool resubmit_unknown = false;
    double backoff_base_s = 1; // first retry delay (min_poll_interval_s)
    double backoff_cap_s = 60; // largest retry delay (max_poll_interval_s)
    std::string_view base_url; // for status URLs a submit answer left out (must outlive the call)
    const poll_planner* planner = nullptr;
    const duration_model* durations = nullptr; // of the job's model
    double jitter01 = 0.5; // a fresh uniform random number in [0, 1) for each call
    // How far the wall clock is ahead of `now` (the daemon's monotonic time): an API's
    // reset time is wall-clock text.
    milliseconds wall_offset{0};
};

// The dispatcher chose this pending job for a submit.
struct ev_submit_begin {};
// The submit could not be made ready (its parameters unreadable, no connection, a
// failed TLS handshake): nothing was sent and the job is still pending.
struct ev_submit_deferred {
    std::string reason;
};
struct ev_submit_answer {
    http_outcome out;
};
struct ev_poll_answer {
    http_outcome out;
};
struct ev_result_answer {
    http_outcome out;
};
struct ev_download_done {
    std::vector<std::string> paths;
};
struct ev_download_failed {
    std::string reason;
    bool retryable = true;
    // Writing the files here failed (a full disk, a read-only folder): the result is safe in
    // the database, so this is retried for as long as it takes, not counted against the job.
    bool local = false;
};
// The answer to the upload of one of a pending job's local inputs that gave no hosted
// URL (a 2xx that did is recorded by the daemon, and the job goes on to its submit).
struct ev_upload_answer {
    http_outcome out;
    std::string input; // the file:// URL, for messages
};
// A local input cannot be uploaded as it was taken in (gone, moved out, changed): the
// job fails with the reason.
struct ev_input_failed {
    std::string reason;
};
// The daemon (re)started with this job in the database.
struct ev_recover {};
// The retention window passed before the result was fetched.
struct ev_expire {};
struct ev_cancel {};
struct ev_retry {};

using event = std::variant<ev_submit_begin, ev_submit_deferred, ev_submit_answer, ev_poll_answer,
                           ev_result_answer, ev_download_done, ev_download_failed, ev_recover,
                           ev_expire, ev_cancel, ev_retry, ev_upload_answer, ev_input_failed>;

enum class work_kind { none, submit, poll, fetch_result, download };
enum class persist_mode {
    none,    // nothing worth writing
    lazy,    // a counter only (a poll that found the request still running): written along
             // with the job's next write, or at shutdown
    batched, // soft state: may be written with others a little later
    durable, // commit before acting on it
};
enum class api_signal {
    none,
    accepted,     // an answer that proves the key and credits work
    rate_limited, // a 429: block every send until rate_limited_until
    unauthorized, // 401: stop submitting
    no_credits,   // 406: stop submitting
};

struct transition {
    job next;
    persist_mode persist = persist_mode::none;
    std::string note; // a line for the job's history (state changes and notable events)
    work_kind work = work_kind::none;
    time_point not_before{};
    api_signal signal = api_signal::none;
    std::optional<time_point> rate_limited_until;
    std::string signal_reason;
    // Seconds from submission to completion, to learn from: known to lie in (lo, hi].
    struct duration_interval {
        double lo;
        double hi;
    };
    std::optional<duration_interval> duration_sample;
    // A submit's answer that proves nothing was created at the API (not sent, or any 4xx):
    // what the attempt was counted against the spend limits is taken back.
    bool submit_created_nothing = false;
    std::string rejection; // non-empty: the event does not apply to this job (409)
    std::string log;       // a line worth logging that is not history (a transient error)
};

transition advance(const job& j, const event& e, time_point now, const lifecycle_context& ctx);

// True when the API has forgotten (or will have forgotten by now) this job's request.
bool past_retention(const job& j, time_point now, double retention_s);

// True when a job's result would be lost if nothing could be sent until `until` (a 429's
// block): submitted, not finished, its result not fetched, and past retention by then.
bool expires_while_blocked(const job& j, time_point until, double retention_s);

} // namespace klingd::core
