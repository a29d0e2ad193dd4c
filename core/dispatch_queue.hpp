// What to send next. Work waits until its time comes, then joins a ready queue
// of its kind; the budget takes, in this order: result fetches (a completed
// result must never expire for lack of budget), polls by deadline (earliest
// expiry first), submits by priority then age. Downloads do not use the API
// budget and have their own queue. Each job has at most one entry that counts:
// scheduling a job again makes its older entries stale (dropped when met).
#pragma once

#include "core/job.hpp"
#include "core/lifecycle.hpp"

#include <cstdint>
#include <optional>
#include <queue>
#include <string>
#include <unordered_map>
#include <vector>

namespace klingd::core {

class dispatch_queue {
public:
    struct item {
        std::string job_id;
        work_kind kind = work_kind::none;
        time_point not_before{}; // when it became due (how long it waited for the budget)
    };

    // Schedules (or re-schedules) a job's next step. deadline orders polls; for
    // submits, priority and created order them.
    void schedule(const std::string& job_id, work_kind kind, time_point not_before,
                  time_point deadline = {}, int priority = 0, time_point created = {});
    // Drops whatever the job had scheduled.
    void cancel(const std::string& job_id);

    // Moves work whose time has come into the ready queues.
    void promote(time_point now);

    // The next budgeted request (result, poll, submit); submits only when allowed.
    // While polls and submits both wait, every fourth send is a submit (else a
    // steady stream of polls would starve submissions for good), unless the
    // earliest poll's deadline is before urgent_before: such polls always go first.
    std::optional<item> pop_budgeted(bool submits_allowed,
                                     time_point urgent_before = time_point::max());
    bool has_budgeted_ready(bool submits_allowed);
    std::optional<item> pop_download();

    // The earliest time at which waiting work becomes due; nullopt when nothing waits.
    std::optional<time_point> next_due();

    bool has_ready_submits();
    std::size_t scheduled() const { return live_.size(); }
    // Due budgeted work (an upper bound: entries replaced since are dropped lazily).
    std::size_t ready_budgeted(bool submits_allowed) const {
        return results_.size() + polls_.size() + (submits_allowed ? submits_.size() : 0);
    }

private:
    struct entry {
        std::string job_id;
        std::uint64_t ticket;
        work_kind kind;
        time_point not_before;
        time_point deadline;
        int priority;
        time_point created;
    };
    struct later_due {
        bool operator()(const entry& a, const entry& b) const {
            return a.not_before > b.not_before;
        }
    };
    struct later_deadline {
        bool operator()(const entry& a, const entry& b) const { return a.deadline > b.deadline; }
    };
    struct lower_priority {
        bool operator()(const entry& a, const entry& b) const {
            if (a.priority != b.priority)
                return a.priority < b.priority;
            if (a.created != b.created)
                return a.created > b.created;
            return a.ticket > b.ticket;
        }
    };
    template <typename Cmp>
    using heap = std::priority_queue<entry, std::vector<entry>, Cmp>;

    bool live(const entry& e) const;
    template <typename Q>
    void drop_stale(Q& q);
    std::optional<item> take(const entry& e);

    static constexpr int polls_per_submit = 3;
    int polls_since_submit_ = 0;
    std::uint64_t next_ticket_ = 1;
    std::unordered_map<std::string, std::uint64_t> live_; // job id -> its current ticket
    heap<later_due> waiting_;
    std::queue<entry> results_;
    heap<later_deadline> polls_;
    heap<lower_priority> submits_;
    std::queue<entry> downloads_;
};

} // namespace klingd::core
