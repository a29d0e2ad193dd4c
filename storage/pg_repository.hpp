// The PostgreSQL backend of the storage seam, for several hosts sharing one database
// (a cluster). One connection driven by the caller's event loop (pg_connection); calls
// take turns on a lane, so they complete in the order they were made. The schema has
// forward migrations of its own (table klingd_schema), run under an advisory lock so
// that nodes starting together migrate once; migrations only add, so nodes of two
// adjacent versions can share a database, and a schema newer than this klingd knows
// is refused.
#pragma once

#include "runtime/async_lane.hpp"
#include "storage/cluster_store.hpp"
#include "storage/job_repository.hpp"
#include "storage/pg_connection.hpp"

#include <functional>
#include <string>

namespace klingd::storage {

class pg_repository final : public job_repository, public cluster_store {
public:
    static constexpr int schema_version = 5;

    explicit pg_repository(std::string conninfo,
                           std::chrono::milliseconds deadline = std::chrono::seconds(10),
                           std::string password = {});
    ~pg_repository() override;

    // Connects and migrates; an error says why the database cannot be used.
    async_result<void> open() override;
    void finish() override;

    async_result<std::vector<insert_outcome>> insert(std::vector<core::job_spec> specs,
                                                     core::time_point now,
                                                     std::vector<std::string> sources) override;
    async_result<std::vector<std::string>> save(std::vector<job_change> changes) override;
    async_result<spend_totals> spend(core::time_point day_start,
                                     core::time_point month_start) override;
    async_result<std::optional<core::job>> get(std::string id) override;
    async_result<std::vector<core::job>> list(job_filter f) override;
    async_result<std::vector<core::job>> unfinished() override;
    async_result<std::string> params_of(std::string id) override;
    async_result<std::vector<history_entry>> history(std::string id) override;
    async_result<state_model_counts> counts() override;
    async_result<std::vector<double>> recent_durations(std::string model, int n) override;
    async_result<std::optional<std::string>> meta(std::string key) override;
    async_result<void> set_meta(std::string key, std::string value) override;
    async_result<std::vector<hook_delivery>> take_due_deliveries(core::time_point now,
                                                                 core::time_point claim_until,
                                                                 std::string target,
                                                                 std::size_t limit) override;
    async_result<void> finish_delivery(hook_delivery d) override;
    async_result<std::vector<hook_delivery>> deliveries_of(std::string job_id) override;
    async_result<std::map<std::string, std::int64_t>> delivery_counts() override;
    async_result<void> release_deliveries() override;
    async_result<std::vector<core::local_input>> inputs_of(std::string id) override;
    async_result<void> record_upload(std::string id, std::string url, std::string sha256,
                                     std::string hosted, core::time_point at, bool fresh) override;
    async_result<std::int64_t> prune(core::time_point finished_before, core::time_point now,
                                     std::size_t limit) override;
    async_result<std::optional<std::string>> cached_upload(std::string sha256,
                                                           core::time_point since) override;

    async_result<lease> join(node_identity me) override;
    async_result<claimed> claim(std::size_t max_pending, std::size_t max_orphans) override;
    async_result<std::optional<core::job>> claim_one(std::string id) override;
    async_result<renewal> renew() override;
    void set_node_settings(double rpm, std::chrono::milliseconds submit_grace) override {
        me_.requests_per_minute = rpm;
        me_.submit_grace = submit_grace;
    }
    async_result<void> release(std::vector<std::string> ids) override;
    async_result<void> leave() override;
    async_result<void> request_cancel(std::string id) override;
    async_result<std::vector<node_row>> nodes() override;
    async_result<std::vector<remote_event>> events_after(std::int64_t seq,
                                                         std::size_t limit) override;
    async_result<std::int64_t> last_event() override;
    async_result<slot_grant> reserve_slots(int count, double configured_rpm,
                                           std::optional<double> my_rpm, std::int64_t my_epoch,
                                           double margin) override;
    async_result<void> report_block(core::time_point until, std::optional<double> lowered) override;
    const std::string& node_name() const override { return me_.name; }

    // --import-sqlite: jobs as SQLite's columns (id, model, params, priority, state,
    // request_id, status_url, response_url, error, outputs, result, created_at,
    // updated_at, submitted_at, remote_done_at, finished_at, attempts, polls, source)
    // and their history lines (job_id, at, state, note, request_id), all as text.
    // And of those jobs: local inputs (job_id, url, path, sha256, bytes, mime, hosted_url),
    // spend rows (job_id, attempt, model, at, micro, refunded as 0/1) and hook deliveries
    // (event_id, target, job_id, type, payload, attempts, outcome, last_error, next_at).
    struct import_batch {
        std::vector<std::vector<pg::param>> jobs;
        std::vector<std::vector<pg::param>> history;
        std::vector<std::vector<pg::param>> inputs;
        std::vector<std::vector<pg::param>> spend;
        std::vector<std::vector<pg::param>> deliveries;
    };
    struct import_counts {
        std::size_t imported = 0, already = 0, history = 0;
        std::vector<std::string> conflicts;
    };
    // One statement: the jobs the database does not have yet, with their history.
    async_result<import_counts> import(import_batch batch);

    // Where the database is, without a password.
    const std::string& target() const { return db_.target(); }
    // Whether a process of this host still runs (join: a dead predecessor's name is free).
    std::function<bool(std::int64_t pid)> pid_alive;

private:
    // The jobs' rows and history (save's one statement); the ids not held.
    async_result<std::vector<std::string>> save_jobs(const std::vector<job_change>& changes);
    // In a transaction: checks and counts the charges, takes back the refunds, saves.
    async_result<std::vector<std::string>> spend_and_save(const std::vector<job_change>& changes,
                                                          bool charged);
    pg::connection db_;
    // The cluster's own calls (join, claims, the heartbeat, budget slots) go on a
    // connection of their own: a long flush or listing never holds up the heartbeat.
    pg::connection heartbeat_db_;
    lane::async_lane heartbeat_lane_;
    node_identity me_; // once joined
    std::string token_;
    lane::async_lane lane_;
};

} // namespace klingd::storage
