// The write-behind journal of job changes. A change is written now (durable:
// "submitting" before a POST, a request id, a result) or remembered for the next
// flush (batched: most polls' outcomes) or only for a flush at shutdown (lazy: a
// poll counter). Writes go through the storage seam one at a time, in the order
// they were asked for, and the event loop goes on while they are on their way.
// Crash rules: a durable write carries every history line the job still owes, so
// history never lags a state that is in the database; a failed write keeps what it
// owed for the next flush; a job that leaves memory keeps its last state here until
// it is written.
#pragma once

#include "core/error.hpp"
#include "core/job.hpp"
#include "daemon/clock.hpp"
#include "runtime/async_lane.hpp"
#include "storage/job_repository.hpp"

#include <boost/asio/awaitable.hpp>
#include <functional>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace klingd::daemon {

class job_journal {
public:
    // The job as it is in memory now, or null when it is not active.
    using lookup = std::function<const core::job*(const std::string& id)>;

    // Jobs are written with their times on the wall clock of clk; a deferred change is
    // read from memory through `active` when it is flushed.
    job_journal(storage::job_repository& repo, const clock& clk, lookup active)
        : repo_(repo), clock_(clk), active_(std::move(active)) {}

    // Writes j (a state newer than the one in memory) with the history it owes and
    // `line`. On failure the owed history is kept and j and line are not: the caller
    // defers the change or gives it up.
    boost::asio::awaitable<core::result<void>>
    write_now(core::job j, std::optional<storage::history_entry> line,
              std::optional<storage::spend_charge> charge = std::nullopt,
              std::optional<std::int64_t> refund_attempt = std::nullopt,
              std::optional<storage::hook_event> event = std::nullopt);
    // Remembers that the job changed (its state is read at the flush) and `line`.
    void defer(const std::string& id, std::optional<storage::history_entry> line);
    // Remembers a change only a flush at shutdown needs to write (a poll counter).
    void defer_lazy(const std::string& id);
    // The job leaves memory: its last state stays here until written.
    void retire(const core::job& j);
    // The last state of a job that left memory and is not written yet, or null.
    const core::job* retired(const std::string& id) const;
    // Shutdown: lazy changes are written too.
    void include_lazy();

    // Writes changes now, in one transaction, their times on the wall clock (start-up's
    // recovered jobs); nothing is kept on failure.
    boost::asio::awaitable<core::result<void>> write(std::vector<storage::job_change> changes);
    // Writes every deferred change in one transaction; on failure keeps them all. Waits
    // behind the writes asked before it, also when nothing is deferred.
    boost::asio::awaitable<core::result<void>> flush();
    bool empty() const { return dirty_.empty(); }
    // In a cluster: jobs whose claim this node lost (a write skipped them); they are no
    // longer written from here. write_now reports its own job as errc::claim_lost too.
    std::function<void(const std::vector<std::string>& ids)> on_claim_lost;
    // Nothing deferred and no write on its way or waiting.
    bool idle() const { return dirty_.empty() && !lane_.busy(); }
    std::size_t pending() const { return dirty_.size(); }

private:
    // Final states' hook events whose write failed: they go with the job's deferred state.
    std::map<std::string, storage::hook_event> events_;
    // Refunds (attempts that provably created nothing) whose write failed: likewise.
    std::map<std::string, std::int64_t> refunds_;
    boost::asio::awaitable<core::result<void>> save(std::vector<storage::job_change> changes);
    // Puts back history lines a failed write took: before any written since.
    void give_back(const std::string& id, std::vector<storage::history_entry> lines);

    storage::job_repository& repo_;
    const clock& clock_;
    lookup active_;
    // One write at a time, in the order asked (a durable write never overtakes a flush
    // that carries an older state of its job).
    lane::async_lane lane_;
    // The jobs whose latest state is not in the database yet (nullopt: the state is the
    // one in memory; a copy only once the job has left memory) and the history lines
    // to write with it.
    std::unordered_map<std::string, std::optional<core::job>> dirty_;
    std::unordered_map<std::string, std::vector<storage::history_entry>> history_;
    std::unordered_set<std::string> lazy_;
    // What the flush on its way took out of dirty_, until it is written.
    std::unordered_map<std::string, std::optional<core::job>> flushing_;
};

} // namespace klingd::daemon
