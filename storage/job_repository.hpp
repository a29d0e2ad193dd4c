// The storage seam: what the daemon asks of a jobs database, shaped by what the
// engine needs and not by SQLite. Every call is asynchronous (the event loop never
// waits on the database) and reports an expected failure (a locked database, a full
// disk, a lost connection) as a core::error, never as an exception. Calls complete
// in the order they were made: a backend keeps one writer, so a change awaited
// before another is committed before it. Times are wall-clock milliseconds.
//
// sqlite_repository is the embedded backend, pg_repository the cluster's;
// tests/storage/job_repository_test.cpp is the suite every backend must pass.
#pragma once

#include "core/error.hpp"
#include "core/job.hpp"
#include "core/job_spec.hpp"
#include "storage/records.hpp"

#include <boost/asio/awaitable.hpp>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace klingd::storage {

template <class T>
using async_result = boost::asio::awaitable<core::result<T>>;

class job_repository {
public:
    virtual ~job_repository() = default;

    // Makes the database ready (connects, migrates) before any other call; an error
    // says why it cannot be used. SQLite opens in its constructor and has nothing left.
    virtual async_result<void> open() { co_return core::result<void>{}; }

    // Records new jobs (state pending, with an "accepted" history line) in one
    // transaction; the outcomes in the order of specs. sources[i] names where spec i
    // came from ("spool:NAME", "socket:pid=..."), or "".
    virtual async_result<std::vector<insert_outcome>> insert(std::vector<core::job_spec> specs,
                                                             core::time_point now,
                                                             std::vector<std::string> sources) = 0;
    // Writes jobs' mutable fields and their history lines in one transaction: all or none
    // of those it may write. In a cluster, a job whose claim this node no longer holds
    // is not written (nor its history): the answer lists those ids (always empty on a
    // single host).
    virtual async_result<std::vector<std::string>> save(std::vector<job_change> changes) = 0;
    // What every node has spent (not taken back) since day_start and since month_start.
    virtual async_result<spend_totals> spend(core::time_point day_start,
                                             core::time_point month_start) = 0;

    virtual async_result<std::optional<core::job>> get(std::string id) = 0;
    // In the order jobs were recorded; without params.
    virtual async_result<std::vector<core::job>> list(job_filter f) = 0;
    // Every job not in a terminal state; params only for jobs not yet submitted.
    virtual async_result<std::vector<core::job>> unfinished() = 0;
    // The job's submit body; "" for an unknown id.
    virtual async_result<std::string> params_of(std::string id) = 0;
    virtual async_result<std::vector<history_entry>> history(std::string id) = 0;
    virtual async_result<state_model_counts> counts() = 0;
    // Seconds from submission to completion of a model's latest n completed jobs.
    virtual async_result<std::vector<double>> recent_durations(std::string model, int n) = 0;

    // Local inputs (file:// URLs in params), recorded at insert from job_spec::inputs.
    virtual async_result<std::vector<core::local_input>> inputs_of(std::string id) = 0;
    // Records an input's hosted URL, before the submit that uses it. fresh: it was
    // uploaded now (not reused), and is remembered by its content for a day.
    virtual async_result<void> record_upload(std::string id, std::string url, std::string sha256,
                                             std::string hosted, core::time_point at,
                                             bool fresh) = 0;
    // The hosted URL of the same content uploaded at or after since.
    virtual async_result<std::optional<std::string>> cached_upload(std::string sha256,
                                                                   core::time_point since) = 0;

    // Completion hooks (the outbox written by save with job_change::event). The pending
    // deliveries due at now, claimed until claim_until so that no one else takes them
    // meanwhile (at most limit; in a cluster a command only by the node that finished its
    // job, a webhook by any); a delivery's outcome written back (its claim released); a
    // job's deliveries in order; the number of deliveries by outcome.
    // Taking one counts its attempt (a crash during it is an attempt too).
    virtual async_result<std::vector<hook_delivery>>
    take_due_deliveries(core::time_point now, core::time_point claim_until, std::string target,
                        std::size_t limit) = 0;
    virtual async_result<void> finish_delivery(hook_delivery d) = 0;
    virtual async_result<std::vector<hook_delivery>> deliveries_of(std::string job_id) = 0;
    virtual async_result<std::map<std::string, std::int64_t>> delivery_counts() = 0;
    // At start: the claims this node (a single host: any) left on deliveries are let go.
    virtual async_result<void> release_deliveries() = 0;

    // Housekeeping: up to limit finished jobs whose end is before finished_before, and
    // with no completion hook left to deliver, are pruned: a tombstone keeps each id (and
    // its content's hash, so the same job again is still a no-op and another job with its
    // id a conflict); the job, its history, inputs and deliveries are gone from every
    // answer. How many were pruned (call again while it returns limit).
    virtual async_result<std::int64_t> prune(core::time_point finished_before, core::time_point now,
                                             std::size_t limit) = 0;

    // Small daemon state ("paused").
    virtual async_result<std::optional<std::string>> meta(std::string key) = 0;
    virtual async_result<void> set_meta(std::string key, std::string value) = 0;

    // Completes the calls in progress (their answers are posted to their callers) and
    // runs no more: for shutdown, before the callers' loop is dropped.
    virtual void finish() = 0;
};

} // namespace klingd::storage
