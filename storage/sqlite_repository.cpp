// Each call of the seam, run on the SQLite worker thread.
#include "storage/sqlite_repository.hpp"

#include <boost/asio/async_result.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <type_traits>

namespace klingd::storage {

namespace asio = boost::asio;

sqlite_repository::sqlite_repository(const std::string& path, sqlite_tuning tuning)
    : store_(path, tuning) {}

sqlite_repository::~sqlite_repository() {
    finish();
}

void sqlite_repository::finish() {
    worker_.join();
}

template <class F>
auto sqlite_repository::on_worker(F f) -> async_result<std::invoke_result_t<F, job_store&>> {
    using T = std::invoke_result_t<F, job_store&>;
    using answer = core::result<T>;
    // f runs on the worker; the answer is handed to the caller's executor, which is kept
    // busy meanwhile (a loop that waits for nothing else must not return early).
    return asio::async_initiate<const asio::use_awaitable_t<>, void(answer)>(
        [this, f = std::move(f)](auto handler) mutable {
            auto ex = asio::get_associated_executor(handler);
            asio::post(worker_, [this, f = std::move(f), handler = std::move(handler),
                                 work = asio::make_work_guard(ex)]() mutable {
                answer out = [&]() -> answer {
                    try {
                        if constexpr (std::is_void_v<T>) {
                            f(store_);
                            return {};
                        } else {
                            return f(store_);
                        }
                    } catch (const spend_refused& e) {
                        return core::error(core::errc::spend_limit, e.what());
                    } catch (const storage_error& e) {
                        return core::error(errc_of(e), e.what());
                    } catch (const std::exception& e) {
                        // Never out of the worker (the pool would terminate the process).
                        return core::error(core::errc::store_failed, e.what());
                    }
                }();
                // The guard goes along: it is released on the caller's thread, never here
                // after the caller may have finished.
                auto to = work.get_executor();
                asio::post(
                    to, [handler = std::move(handler), out = std::move(out),
                         work = std::move(work)]() mutable { std::move(handler)(std::move(out)); });
            });
        },
        asio::use_awaitable);
}

async_result<std::vector<insert_outcome>>
sqlite_repository::insert(std::vector<core::job_spec> specs, core::time_point now,
                          std::vector<std::string> sources) {
    return on_worker([specs = std::move(specs), now, sources = std::move(sources)](job_store& s) {
        return s.insert_many(specs, now, sources);
    });
}

async_result<std::vector<std::string>> sqlite_repository::save(std::vector<job_change> changes) {
    return on_worker([changes = std::move(changes)](job_store& s) {
        s.save_many(changes);
        return std::vector<std::string>{}; // one host holds every job
    });
}

async_result<spend_totals> sqlite_repository::spend(core::time_point day_start,
                                                    core::time_point month_start) {
    return on_worker(
        [day_start, month_start](job_store& s) { return s.spend(day_start, month_start); });
}

async_result<std::optional<core::job>> sqlite_repository::get(std::string id) {
    return on_worker([id = std::move(id)](job_store& s) { return s.get(id); });
}

async_result<std::vector<core::job>> sqlite_repository::list(job_filter f) {
    return on_worker([f = std::move(f)](job_store& s) { return s.list(f); });
}

async_result<std::vector<core::job>> sqlite_repository::unfinished() {
    return on_worker([](job_store& s) { return s.unfinished(); });
}

async_result<std::string> sqlite_repository::params_of(std::string id) {
    return on_worker([id = std::move(id)](job_store& s) { return s.params_of(id); });
}

async_result<std::vector<history_entry>> sqlite_repository::history(std::string id) {
    return on_worker([id = std::move(id)](job_store& s) { return s.history(id); });
}

async_result<state_model_counts> sqlite_repository::counts() {
    return on_worker([](job_store& s) { return s.count_by_state_and_model(); });
}

async_result<std::vector<double>> sqlite_repository::recent_durations(std::string model, int n) {
    return on_worker(
        [model = std::move(model), n](job_store& s) { return s.recent_durations(model, n); });
}

async_result<std::optional<std::string>> sqlite_repository::meta(std::string key) {
    return on_worker([key = std::move(key)](job_store& s) { return s.meta(key); });
}

async_result<void> sqlite_repository::set_meta(std::string key, std::string value) {
    return on_worker(
        [key = std::move(key), value = std::move(value)](job_store& s) { s.set_meta(key, value); });
}

async_result<std::vector<core::local_input>> sqlite_repository::inputs_of(std::string id) {
    return on_worker([id = std::move(id)](job_store& s) { return s.inputs_of(id); });
}

async_result<void> sqlite_repository::record_upload(std::string id, std::string url,
                                                    std::string sha256, std::string hosted,
                                                    core::time_point at, bool fresh) {
    return on_worker([id = std::move(id), url = std::move(url), sha256 = std::move(sha256),
                      hosted = std::move(hosted), at, fresh](job_store& s) {
        s.record_upload(id, url, sha256, hosted, at, fresh);
    });
}

async_result<std::optional<std::string>> sqlite_repository::cached_upload(std::string sha256,
                                                                          core::time_point since) {
    return on_worker([sha256 = std::move(sha256), since](job_store& s) {
        return s.cached_upload(sha256, since);
    });
}

async_result<std::int64_t> sqlite_repository::prune(core::time_point finished_before,
                                                    core::time_point now, std::size_t limit) {
    return on_worker([finished_before, now, limit](job_store& s) {
        return s.prune(finished_before, now, limit);
    });
}

async_result<std::vector<hook_delivery>>
sqlite_repository::take_due_deliveries(core::time_point now, core::time_point claim_until,
                                       std::string target, std::size_t limit) {
    return on_worker([now, claim_until, target = std::move(target), limit](job_store& s) {
        return s.take_due_deliveries(now, claim_until, target, limit);
    });
}

async_result<void> sqlite_repository::finish_delivery(hook_delivery d) {
    return on_worker([d = std::move(d)](job_store& s) { s.finish_delivery(d); });
}

async_result<std::vector<hook_delivery>> sqlite_repository::deliveries_of(std::string job_id) {
    return on_worker([id = std::move(job_id)](job_store& s) { return s.deliveries_of(id); });
}

async_result<std::map<std::string, std::int64_t>> sqlite_repository::delivery_counts() {
    return on_worker([](job_store& s) { return s.delivery_counts(); });
}

async_result<void> sqlite_repository::release_deliveries() {
    return on_worker([](job_store& s) {
        s.db().exec("UPDATE deliveries SET claim_until = NULL WHERE claim_until IS NOT NULL",
                    "release the deliveries' claims");
    });
}

} // namespace klingd::storage
