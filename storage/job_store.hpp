// The SQLite jobs database: schema with forward migrations (PRAGMA user_version),
// WAL, statements prepared once, one transaction for every multi-row change. Holds
// jobs, their history of transitions and small daemon state (paused, ...).
// Synchronous and single-threaded: the daemon reaches it only through
// sqlite_repository, which runs it on a worker thread of its own.
#pragma once

#include "core/job.hpp"
#include "core/job_spec.hpp"
#include "storage/records.hpp"
#include "storage/sqlite.hpp"

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace klingd::storage {

// How a connection waits and syncs. klingd uses the defaults; tests shorten the wait
// for a lock, and the fuzzers, which do not test durability, turn off fsync.
struct sqlite_tuning {
    std::chrono::milliseconds busy_timeout{5000};
    bool fsync = true; // PRAGMA synchronous = FULL, else OFF
};

class job_store {
public:
    // Opens (creating if needed) and migrates. Throws storage_error when the file
    // is not a database, is from a newer klingd, or cannot be opened; it is never overwritten.
    explicit job_store(const std::string& path, sqlite_tuning tuning = {});

    static constexpr int schema_version = 6;

    // Records a new job (state pending). Throws storage_error on failure.
    insert_outcome insert(const core::job_spec& spec, core::time_point now,
                          const std::string& source);
    // Inserts many in one transaction; outcomes in the same order.
    std::vector<insert_outcome> insert_many(const std::vector<core::job_spec>& specs,
                                            core::time_point now,
                                            const std::vector<std::string>& sources);

    // Writes a job's mutable fields; a non-empty note is added to its history.
    void save(const core::job& j, const std::string& note = {});
    using change = job_change;
    // Writes many jobs and their history entries in one transaction.
    void save_many(const std::vector<change>& changes);
    // Spent (not taken back) since day_start and since month_start, micro-units.
    spend_totals spend(core::time_point day_start, core::time_point month_start);

    std::optional<core::job> get(const std::string& id);
    std::vector<core::job> list(const job_filter& f);
    // Every job not in a terminal state; params only for jobs not yet submitted.
    std::vector<core::job> unfinished();
    std::string params_of(const std::string& id);
    std::vector<history_entry> history(const std::string& id);
    // (state, model) -> number of jobs.
    state_model_counts count_by_state_and_model();
    // Seconds from submission to completion of the latest completed requests of a model.
    std::vector<double> recent_durations(const std::string& model, int n);

    // A job's local inputs, in the order recorded at intake.
    std::vector<core::local_input> inputs_of(const std::string& id);
    // The input's hosted URL; fresh: uploaded now (not reused), remembered by content.
    void record_upload(const std::string& id, const std::string& url, const std::string& sha256,
                       const std::string& hosted, core::time_point at, bool fresh);
    // The hosted URL of content uploaded at or after since, if any.
    std::optional<std::string> cached_upload(const std::string& sha256, core::time_point since);
    // Housekeeping: at most limit jobs finished before finished_before (with no hook
    // delivery pending) become tombstones; their history, inputs and deliveries go. How
    // many were pruned.
    std::int64_t prune(core::time_point finished_before, core::time_point now, std::size_t limit);

    // Completion hooks: the pending deliveries due at now, claimed until claim_until (at
    // most limit); a delivery's outcome written back; a job's deliveries; counts by outcome.
    std::vector<hook_delivery> take_due_deliveries(core::time_point now,
                                                   core::time_point claim_until,
                                                   const std::string& target, std::size_t limit);
    void finish_delivery(const hook_delivery& d);
    std::vector<hook_delivery> deliveries_of(const std::string& job_id);
    std::map<std::string, std::int64_t> delivery_counts();

    std::optional<std::string> meta(const std::string& key);
    void set_meta(const std::string& key, const std::string& value);

    connection& db() { return db_; }

private:
    void charge(const core::job& j, const spend_charge& c);
    void refund(const std::string& id, std::int64_t attempt);
    void add_event(const std::string& job_id, const hook_event& e);
    void migrate();
    core::job read_job(statement& s, bool with_params) const;
    void write_job(const core::job& j);
    void write_history(const std::string& id, const history_entry& e);

    connection db_;
    std::optional<statement> insert_;
    std::optional<statement> find_content_;
    std::optional<statement> update_;
    std::optional<statement> add_history_;
    std::optional<statement> get_;
    std::optional<statement> params_;
};

} // namespace klingd::storage
