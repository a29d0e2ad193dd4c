// The engine is the conductor: it keeps the active jobs, carries out what the
// dispatch policy decides (core/dispatch_policy: what to send next and when), sends
// requests through the HTTP client, feeds each answer to the pure lifecycle, hands
// what a transition asks to persist to the job journal (durably before it takes
// effect, or batched), and results to the downloader. One io_context thread: no
// locks; the database is reached through the storage seam, never waited on.
#pragma once

#include "config/settings.hpp"
#include "core/dispatch_policy.hpp"
#include "core/dispatch_queue.hpp"
#include "core/duration_model.hpp"
#include "core/forecast.hpp"
#include "core/job_spec.hpp"
#include "core/lifecycle.hpp"
#include "core/poll_planner.hpp"
#include "core/rate_budget.hpp"
#include "core/submission_gate.hpp"
#include "core/url.hpp"
#include "daemon/blocking_pool.hpp"
#include "daemon/clock.hpp"
#include "daemon/downloader.hpp"
#include "daemon/hooks.hpp"
#include "daemon/http_client.hpp"
#include "daemon/job_journal.hpp"
#include "daemon/local_inputs.hpp"
#include "storage/cluster_store.hpp"
#include "storage/job_repository.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <string>
#include <unordered_map>
#include <unordered_set>

namespace klingd::daemon {

struct engine_stats {
    // API requests by kind and answer ("200", "429", "not_sent", "lost", "too_large")
    std::map<core::request_kind, std::map<std::string, std::uint64_t>> requests;
    std::uint64_t rate_limited = 0;
    std::uint64_t downloads_ok = 0;
    std::uint64_t downloads_failed = 0;
    std::uint64_t intake_accepted = 0;
    std::uint64_t intake_conflicts = 0;
    std::uint64_t intake_duplicates = 0;
    std::uint64_t intake_invalid = 0; // spool files rejected as malformed
    std::uint64_t polls = 0;
    // Jobs that reached a final state in this process, by that state.
    std::map<std::string, std::uint64_t> finished;
    // Estimated delay from completion at the API to klingd seeing it (half the last poll gap).
    double detection_delay_sum_s = 0;
    std::uint64_t detection_delay_count = 0;
    // Cluster: unfinished jobs this node took over from a node that stopped, and jobs it
    // held and lost to another node (its claim lapsed).
    std::uint64_t taken_over = 0;
    std::uint64_t claims_lost = 0;
    // Spent by this node's submissions that were not taken back, by model (micro-units).
    std::map<std::string, std::int64_t> spend_micro;
};

// Priced submissions held back by a spend limit until the UTC day or month ends.
struct spend_hold {
    storage::spend_limit_kind kind = storage::spend_limit_kind::daily;
    core::time_point until{}; // engine time
    std::int64_t today = 0;   // spent (micro-units) when the limit refused a submission
    std::int64_t month = 0;
};

class engine {
public:
    // clk: the one clock the engine reads (daemon/clock.hpp). cluster: the shared
    // database's claims when this node is part of a cluster (PostgreSQL), else null.
    engine(boost::asio::io_context& io, const config::settings& s, storage::job_repository& repo,
           http_client& client, const clock& clk, storage::cluster_store* cluster = nullptr);

    // Loads unfinished jobs and starts the dispatcher. Throws std::runtime_error when
    // the database cannot be read or written.
    boost::asio::awaitable<void> start();
    // Stops sending new work, waits (bounded) for requests in flight so their
    // answers are recorded, and flushes batched writes.
    boost::asio::awaitable<void> stop(std::chrono::milliseconds grace);

    // New jobs (spool or socket), recorded durably before this completes; a store
    // error when they could not be recorded (nothing was taken then).
    boost::asio::awaitable<core::result<std::vector<storage::insert_outcome>>>
    add_jobs(std::vector<core::job_spec> specs, std::vector<std::string> sources);

    // A job as it is now (in memory, else in the database), its times on the wall clock.
    boost::asio::awaitable<core::result<std::optional<core::job>>> find(std::string id);
    boost::asio::awaitable<core::result<std::vector<core::job>>> list(storage::job_filter f);
    boost::asio::awaitable<core::result<std::vector<storage::history_entry>>>
    history(std::string id);

    // The job, cancelled or pending again; errc::job_not_found, or errc::wrong_state with
    // the lifecycle's reason, or a store error.
    boost::asio::awaitable<core::result<core::job>> cancel(std::string id);
    boost::asio::awaitable<core::result<core::job>> retry(std::string id);
    // Pauses or resumes submissions (the cluster's, in a cluster) once recorded; an error
    // when the database could not record it (nothing changed then).
    boost::asio::awaitable<core::result<void>> set_paused(bool paused);
    // The settings changed (SIGHUP): budget, poll policy and model priors follow them.
    void reconfigure();
    // At shutdown, once the event loop has stopped and before its pending work is dropped:
    // waits for the downloads' file work still running; closes the input pool (its stuck
    // calls are left behind and deliver nothing).
    void finish_files() {
        downloader_.finish();
        input_work_.close();
    }
    bool paused() const { return gate_.paused(); }
    // The spend limit holding priced submissions now, if any; whether it holds job j.
    std::optional<spend_hold> spend_held() const;
    bool holds_back(const core::job& j) const;
    // What every node has spent this UTC day and month (micro-units).
    boost::asio::awaitable<core::result<storage::spend_totals>> spend_totals();
    // Completion hooks: a job's deliveries; every delivery counted by outcome.
    boost::asio::awaitable<core::result<std::vector<storage::hook_delivery>>>
    deliveries_of(std::string id);
    boost::asio::awaitable<core::result<std::map<std::string, std::int64_t>>> delivery_counts();

    // Why submissions are not going out now (paused, 401, 406), or "".
    std::string blocked_reason() const { return gate_.blocked_reason(); }
    const engine_stats& stats() const { return stats_; }
    const core::rate_budget& budget() const { return budget_; }
    core::rate_budget& budget() { return budget_; }
    std::size_t in_flight() const { return in_flight_jobs_; }
    boost::asio::awaitable<core::result<std::map<std::string, std::int64_t>>> count_by_state();
    boost::asio::awaitable<core::result<storage::state_model_counts>> count_by_state_and_model();
    // When the unfinished jobs of counts (jobs by state and model) should be done at the
    // budget allowed now, the learned run times and requests a job, and the in-flight cap;
    // cost_micro: what the pending ones will cost at the models' prices.
    struct forecast_view {
        core::forecast f;
        std::int64_t cost_micro = 0;
        double requests_per_job = 3;
    };
    forecast_view forecast_of(const storage::state_model_counts& counts);
    // Forecasts made once a minute (application), and how the one made an hour before the
    // last backlog drained did.
    core::forecast_tracker& forecasts() { return forecasts_; }
    // Seconds the oldest pending job has waited; 0 when none waits.
    double oldest_pending_age_s();
    // Seconds since the API accepted the oldest request whose result klingd has not fetched
    // yet (it is lost jobs.result_retention_s after that); 0 when none.
    double oldest_unfetched_age_s();
    void note_invalid_file() { ++stats_.intake_invalid; }

    const clock& time() const { return clock_; }

    // How long the checks of a job's local files (and the read of one for its upload) may
    // take before they are given up; a slow or hung mount costs a thread, not the loop.
    static constexpr std::chrono::seconds input_work_deadline{120};
    // Upload reads of one job's file that may outlive that deadline before the job fails.
    static constexpr int max_read_timeouts = 3;
    // Housekeeping: every job finished before finished_before (wall clock) is pruned,
    // leaving its tombstone (storage's prune); how many.
    boost::asio::awaitable<core::result<std::int64_t>> prune(core::time_point finished_before);
    // The pool for blocking file work of the daemon's (checks, uploads, the spool's cleanup).
    blocking_pool& file_work() { return input_work_; }
    // check_local_inputs off the event loop, within input_work_deadline: the inputs, or
    // errc::invalid_job saying what is wrong or that the check did not end in time.
    boost::asio::awaitable<core::result<std::vector<core::local_input>>>
    check_inputs(std::vector<core::local_ref> refs, std::optional<submitter> who);
    const config::settings& settings() const { return settings_; }

    // In a cluster: this node's name ("" on a single host), whether it may act on the
    // jobs it holds now (its claims outlive a request), and why not.
    const std::string& node_name() const;
    bool in_cluster() const { return cluster_ != nullptr; }
    bool holds_claims() const;
    // Cluster: unfinished jobs held in memory, and seconds left of this node's claims
    // (negative once lapsed).
    std::size_t jobs_held() const { return active_.size(); }
    double lease_left_s() const;
    std::string degraded_reason() const;
    boost::asio::awaitable<core::result<std::vector<storage::node_row>>> nodes();
    // Cluster: a change another node recorded (its time on the wall clock).
    std::function<void(const core::job&, const std::string& note, core::time_point at)>
        on_remote_change;
    // Called when the engine cannot go on (another process took this node's name).
    std::function<void(const std::string& why)> on_fatal;

    // Called after each job change (for watchers), the job's times in engine time (turn
    // them into wall-clock times with time().to_wall()); may be empty.
    std::function<void(const core::job&, const std::string& note)> on_change;
    // The completion hooks' runner (its figures for /v1/stats and /metrics); set by the
    // application, null in tests that run an engine alone.
    hook_runner* hooks = nullptr;
    // The outbox event of a job that arrives at a final state now (next: the job in the
    // engine's time), when hooks are configured.
    std::optional<storage::hook_event> hook_event_for(const core::job& next) const;

private:
    core::time_point now() const { return clock_.now(); }
    // A job as the outside sees it: its times on the wall clock.
    core::job to_wall(const core::job& j) const { return core::shifted(j, clock_.wall_offset()); }

    boost::asio::awaitable<void> dispatcher();
    boost::asio::awaitable<void> flusher();
    // Cluster: the heartbeat (renews this node's claims, hears cancels and pause from the
    // others) and the taking of work, once a second or when woken.
    boost::asio::awaitable<void> claimer();
    boost::asio::awaitable<void> cluster_tick();
    // Takes jobs just claimed (or read at start) into memory: recovered as after a
    // restart, scheduled, their recovery recorded.
    boost::asio::awaitable<void> adopt(std::vector<core::job> jobs, const char* why);
    // adopt's two halves: into memory at once (also the unfinished jobs at start, why
    // null: only changes of state are logged); the recovery's write.
    std::vector<storage::job_change> take_in(std::vector<core::job> jobs, const char* why);
    boost::asio::awaitable<void> record_taken(std::vector<storage::job_change> changes);
    boost::asio::awaitable<void> apply_later(std::string id, core::transition t);
    // The job leaves this node's memory: another node holds it now.
    void drop(const std::string& id);
    // How many more pending jobs this node should hold.
    std::size_t pending_room() const;
    // What is left of the claims that lets a request be sent.
    std::chrono::milliseconds send_margin() const;
    // Cluster: how long after its claim a job caught in "submitting" waits to be taken over.
    std::chrono::milliseconds submit_grace() const;
    void note_lease(core::time_point asked, const storage::lease& l);
    void wake_claimer();
    // Cluster: keeps a few slots of the account's shared schedule in hand while budgeted
    // work waits, and adopts the shared rate and 429 blocks.
    boost::asio::awaitable<void> slot_reserver();
    // Follows the history other nodes write, for this node's watchers (/v1/events).
    boost::asio::awaitable<void> follower();
    // Budgeted sends that could go now if the budget allowed.
    std::size_t sends_waiting();
    void adopt_shared_rate(std::optional<double> shared_rpm, std::int64_t epoch);
    // A 429 this node saw holds every node back.
    boost::asio::awaitable<void> share_block(core::time_point until, std::optional<double> lowered);
    // taken_at: when the dispatcher took the item's budget slot.
    boost::asio::awaitable<void> execute(core::dispatch_queue::item item,
                                         core::time_point taken_at);
    boost::asio::awaitable<void> send_submit(std::string id, core::time_point taken_at);
    // A status poll, or the result fetch.
    // Uploads the next local input of a pending job that has no hosted URL yet (or finds
    // the same content uploaded within a day): nullopt then, the job scheduled again or
    // failed. With every input hosted: params with the hosted URLs in place.
    boost::asio::awaitable<std::optional<std::string>>
    prepare_inputs(std::string id, std::string params, core::time_point taken_at);
    boost::asio::awaitable<void> send_get(std::string id, bool poll, core::time_point taken_at);
    // A job not in memory, in engine time: the journal's unwritten copy, else the database's.
    boost::asio::awaitable<core::result<std::optional<core::job>>> inactive_job(std::string id);
    // The job as find() sees it; errc::job_not_found when there is none.
    boost::asio::awaitable<core::result<core::job>> existing(std::string id);
    // The body of a job's submit: in memory, else from the database; "" when unreadable.
    boost::asio::awaitable<std::string> submit_body(std::string id, std::string params);
    boost::asio::awaitable<void> download(std::string id);
    // Commits "submitting" for a submit that has passed the gate; false when it could not be.
    boost::asio::awaitable<bool> begin_submit(std::string id);
    // Makes the dispatcher run now. wake_by: only if it would otherwise sleep past `at`.
    void wake();
    void wake_by(core::time_point at);

    core::lifecycle_context context_for(const core::job& j);
    core::duration_model& durations_for(const std::string& model);
    // Persists what the transition asks (a durable change is committed before it takes
    // effect), then applies it to the job in memory and schedules its next work. false
    // when it did not take effect (rejected, or a durable "submitting" not committed).
    boost::asio::awaitable<bool> apply(std::string id, core::transition t);
    // Persists what the transition asks; false when a durable "submitting" failed. id and
    // t live in apply()'s frame, which awaits this.
    boost::asio::awaitable<bool> persist(const std::string& id, const core::transition& t);
    void log_transition(const std::string& id, const core::transition& t);
    void schedule(const core::job& j, core::work_kind w, core::time_point at);
    // Writes batched changes (a failure is logged; they are kept for the next flush).
    boost::asio::awaitable<void> flush();
    void count(core::request_kind kind, const core::http_outcome& o);
    // sent_at: when the request's budget slot was taken; answered: an HTTP answer came.
    void note_signal(const core::transition& t, bool from_submit, core::time_point sent_at,
                     bool answered);
    // Replaces the API key wherever a server echoed it into text we keep or log.
    // Replaces every API key this process has held (keys_held_) in what a transition
    // records or logs: an answer may repeat the key it was sent, also an old one.
    void scrub(core::transition& t) const;
    void hold_key();
    // Puts limits in force: the dispatch policy's, and the connections the pool keeps.
    void use_limits(const core::dispatch_limits& l);
    // Follows the automatic limits as the measured answer and run times move.
    void follow_limits();
    // Logs the jobs whose retention ends before a 429's block does.
    void warn_of_expiry_while_blocked(core::time_point until);
    core::dispatch_limits limits() const;
    core::in_flight_counts counts() const {
        return {requests_in_flight_, downloads_in_flight_, in_flight_jobs_ + starting_submits_,
                submits_in_flight_};
    }

    boost::asio::io_context& io_;
    const config::settings& settings_;
    // Contents (SHA-256) whose upload is under way: another job with the same waits for it.
    std::set<std::string> uploading_;
    storage::job_repository& repo_;
    storage::cluster_store* cluster_;
    core::time_point lease_until_{}; // engine time: this node's claims last until then
    std::string db_problem_;         // the last failure to reach the database, until it works
    int pause_writes_ = 0;           // pauses or resumes being recorded now
    std::int64_t pause_epoch_ = 0;   // bumped when one has been recorded
    boost::asio::steady_timer claim_timer_;
    bool claim_soon_ = false;
    bool left_ = false; // stop() has released this node's claims: the heartbeat ends
    std::unordered_set<std::string> recording_; // jobs taken over whose recovery is being written
    std::optional<spend_hold> spend_hold_;
    // The jobs a spend hold put off (their submit waits for its end): let go when it ends.
    std::set<std::string> held_by_spend_;
    // Ends the hold and lets the jobs it put off go now (a reload, a refund that made room).
    void release_spend_hold(const char* why);
    struct charged {
        std::int64_t attempt;
        std::int64_t micro;
    };
    std::unordered_map<std::string, charged> charged_; // submits counted, answer awaited
    // The charge for committing j as "submitting" (none for an unpriced model).
    std::optional<storage::spend_charge> charge_for(const core::job& j) const;
    // A limit refused a submission (detail: "<limit> <today> <month>"): hold priced ones.
    void hold_spending(const std::string& detail, const storage::spend_charge& refused);
    std::unordered_set<std::string> cancels_applying_; // cancels asked elsewhere, being applied
    std::unordered_set<std::string> cancels_refused_;  // and refused here (said once)
    boost::asio::steady_timer slot_timer_;
    std::int64_t budget_epoch_ = 0;   // of the shared rate last adopted
    std::string reserve_problem_;     // the last failure to reserve slots, said once
    core::milliseconds db_offset_{0}; // engine time less the database's clock
    http_client& client_;
    const clock& clock_;
    core::http_url base_;

    std::unordered_map<std::string, core::job> active_;
    core::dispatch_queue queue_;
    core::rate_budget budget_;
    core::poll_planner planner_;
    core::submission_gate gate_;
    core::dispatch_policy policy_;
    std::map<std::string, core::duration_model> durations_;
    job_journal journal_;
    downloader downloader_;
    core::forecast_tracker forecasts_;
    // Local files' checks and upload reads (see input_work_deadline).
    blocking_pool input_work_;
    std::mt19937_64 rng_{std::random_device{}()};

    boost::asio::steady_timer wake_timer_;
    // When the dispatcher's sleep ends, on the timer's (steady) clock: job times are wall
    // clock and may jump; min while it runs or a wake-up is on its way.
    std::chrono::steady_clock::time_point armed_until_ =
        std::chrono::steady_clock::time_point::min();
    bool stopping_ = false;
    std::size_t in_flight_jobs_ = 0; // submitting, queued, processing
    std::size_t requests_in_flight_ = 0;
    std::size_t submits_in_flight_ = 0;
    std::size_t downloads_in_flight_ = 0;
    // Submits sent off by the dispatcher whose "submitting" is not committed yet.
    std::size_t starting_submits_ = 0;
    std::size_t posting_submits_ = 0; // sent (or being sent), "submitting" committed
    // Jobs with a durable change on its way to the database, and the state it records:
    // no other event applies to them until it is committed.
    std::unordered_map<std::string, core::job_state> committing_;
    std::vector<std::string> keys_held_;
    // Upload reads that outlived input_work_deadline, by job (max_read_timeouts).
    std::unordered_map<std::string, int> read_timeouts_;
    // Housekeeping's prune and retries of finished jobs take turns (see retry()).
    bool pruning_ = false;
    std::size_t retries_running_ = 0;
    double answer_s_ = 0.3; // moving average of an API exchange's time (automatic connections)
    core::time_point warned_block_until_{}; // the 429 block last warned of

    engine_stats stats_;
};

} // namespace klingd::daemon
