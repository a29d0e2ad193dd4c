// What a node of a cluster asks of the shared database, beside the jobs themselves:
// its name (join, leave), its claims on jobs (claim, renew, release) and the other
// nodes. A node acts on a job only while it holds the job's claim: a lease timed by
// the database's clock and renewed by the node's heartbeat; a node that stops renewing
// loses its claims when they lapse, and any node may take them. Every write of a job
// carries the claim's token and is refused once another node has taken the job
// (job_repository::save skips and reports those jobs); "submitting" is refused, too,
// when less than the node's submit margin is left of the claim. A lapsed claim that no
// node has taken still carries the token: the heartbeat renews it.
// pg_repository implements it; a single host (SQLite) has no cluster.
#pragma once

#include "storage/job_repository.hpp"

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace klingd::storage {

struct node_identity {
    std::string name;    // cluster.node
    std::string host_id; // /etc/machine-id: tells a dead predecessor on this host apart
    std::int64_t pid = 0;
    std::string version;
    double requests_per_minute = 0;
    std::chrono::milliseconds takeover{30000};
    // How long a claim must still last for "submitting" to be written under it: the POST
    // that follows must end before another node may take the job.
    std::chrono::milliseconds submit_margin{0};
    // How much longer than its claim a job caught in "submitting" waits before another
    // node takes it over: the time its holder's POST may still take to be answered and
    // recorded (the holder may be cut off from the database, not dead).
    std::chrono::milliseconds submit_grace{0};
};

// A lease as the database's clock sees it: the database's now and the claims' end, both
// wall-clock milliseconds of the database; a node measures what is left from its own
// clock at the moment it asked.
struct lease {
    core::time_point db_now{};
    core::time_point until{};
};

struct claimed {
    lease l;
    std::vector<core::job> jobs; // newly held; params only for jobs not yet submitted
};

struct renewal {
    lease l;
    core::time_point blocked_until{};          // the account's 429 block, by the database's clock
    bool node_alive = true;                    // false: another process took this node's name
    std::vector<std::string> held;             // unfinished jobs this node still holds
    std::vector<std::string> cancel_requested; // held jobs another node was asked to cancel
    bool paused = false;
};

// Slots of the account's shared schedule, by the database's clock: first, then one
// every interval_ms; and the shared rate (the AIMD's, none: not lowered) and its epoch.
struct slot_grant {
    core::time_point db_now{};
    core::time_point first{};
    double interval_ms = 0;
    int count = 0;
    std::optional<double> allowed_rpm;
    std::int64_t epoch = 0;
    core::time_point blocked_until{};
};

// A change another node recorded (a line of a job's history), for this node's watchers.
struct remote_event {
    std::int64_t seq = 0;
    core::job j; // id, model, state, request_id, error as the job is now; state: the line's
    core::time_point at{};
    std::string note;
    bool own = false; // written by this node (or copied by an import): not an event here
};

struct node_row {
    std::string name;
    std::string version;
    std::optional<core::time_point> heartbeat_at; // the database's clock
    core::time_point db_now{};
    bool live = false;
    bool stopped = false;  // left cleanly
    std::int64_t held = 0; // unfinished jobs it holds
    double requests_per_minute = 0;
};

class cluster_store {
public:
    virtual ~cluster_store() = default;

    // Takes the node's name, with a new token. Refused (errc::node_name_taken) while a
    // live node of another process holds the name; a name left by a dead process of this
    // host (same machine id, its pid gone) or silent for `takeover` is taken over, and
    // the claims it held lapse at once.
    virtual async_result<lease> join(node_identity me) = 0;
    // Takes up to max_orphans submitted jobs nobody holds (a node died) and up to
    // max_pending pending jobs nobody holds (priority, then age), with SKIP LOCKED: two
    // nodes never take one job.
    virtual async_result<claimed> claim(std::size_t max_pending, std::size_t max_orphans) = 0;
    // Takes one job: free, finished, or already ours. nullopt when another live node
    // holds it (or there is no such job: get() tells).
    virtual async_result<std::optional<core::job>> claim_one(std::string id) = 0;
    // The heartbeat: renews the node and every claim it still holds.
    virtual async_result<renewal> renew() = 0;
    // This node's api.requests_per_minute or its submit grace (api.request_timeout_s)
    // changed (a reload): the next heartbeat says so.
    virtual void set_node_settings(double rpm, std::chrono::milliseconds submit_grace) = 0;
    // Lets go of jobs (a node that will not act on them soon).
    virtual async_result<void> release(std::vector<std::string> ids) = 0;
    // Shutdown: every unfinished job it holds is free at once; the node is marked stopped.
    virtual async_result<void> leave() = 0;
    // Asks the node that holds the job to cancel it (it does at its next heartbeat).
    virtual async_result<void> request_cancel(std::string id) = 0;
    virtual async_result<std::vector<node_row>> nodes() = 0;
    // The history lines written after seq (at most limit, in order of their numbers),
    // those of this node marked own.
    virtual async_result<std::vector<remote_event>> events_after(std::int64_t seq,
                                                                 std::size_t limit) = 0;
    virtual async_result<std::int64_t> last_event() = 0;

    // The account's budget, shared. Reserves count slots of the schedule, paced at the
    // smallest requests_per_minute of the live nodes (this node's configured_rpm when
    // none is listed), or the shared rate when a 429 has lowered it, less margin.
    // my_rpm: this node's allowed rate when below its configured one (none: full);
    // my_epoch: the epoch of the shared rate it last adopted. Its raise counts only if
    // it has seen the latest decrease.
    virtual async_result<slot_grant> reserve_slots(int count, double configured_rpm,
                                                   std::optional<double> my_rpm,
                                                   std::int64_t my_epoch, double margin) = 0;
    // A 429: every node holds back until `until` (database clock); lowered: the rate this
    // node lowered itself to (a new epoch), none when it did not lower it.
    virtual async_result<void> report_block(core::time_point until,
                                            std::optional<double> lowered) = 0;
    // The job's holder now, if a live one.
    virtual const std::string& node_name() const = 0;
};

} // namespace klingd::storage
