// The embedded backend: the SQLite job_store behind the storage seam. The store
// lives on one worker thread of its own (one writer, calls in order); each call
// hops there and its answer comes back to the caller's executor, so the event loop
// never waits on a lock, an fsync or a slow disk.
#pragma once

#include "storage/job_repository.hpp"
#include "storage/job_store.hpp"

#include <boost/asio/thread_pool.hpp>
#include <string>

namespace klingd::storage {

class sqlite_repository final : public job_repository {
public:
    // Opens (creating and migrating) on the calling thread: throws storage_error when
    // the file cannot be used, as job_store does. ":memory:" is a private in-memory database.
    explicit sqlite_repository(const std::string& path, sqlite_tuning tuning = {});
    // Waits for calls in progress to finish.
    ~sqlite_repository() override;
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

private:
    // Runs f(store_) on the worker thread; a storage_error becomes the result's error.
    template <class F>
    auto on_worker(F f) -> async_result<std::invoke_result_t<F, job_store&>>;

    job_store store_;
    boost::asio::thread_pool worker_{1};
};

} // namespace klingd::storage
