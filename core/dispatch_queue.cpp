// Heaps and queues with lazy deletion by ticket.
#include "core/dispatch_queue.hpp"

namespace klingd::core {

void dispatch_queue::schedule(const std::string& job_id, work_kind kind, time_point not_before,
                              time_point deadline, int priority, time_point created) {
    if (kind == work_kind::none) {
        cancel(job_id);
        return;
    }
    std::uint64_t t = next_ticket_++;
    live_[job_id] = t;
    waiting_.push(entry{job_id, t, kind, not_before, deadline, priority, created});
}

void dispatch_queue::cancel(const std::string& job_id) {
    live_.erase(job_id);
}

bool dispatch_queue::live(const entry& e) const {
    auto it = live_.find(e.job_id);
    return it != live_.end() && it->second == e.ticket;
}

void dispatch_queue::promote(time_point now) {
    while (!waiting_.empty() && waiting_.top().not_before <= now) {
        entry e = waiting_.top();
        waiting_.pop();
        if (!live(e))
            continue;
        switch (e.kind) {
        case work_kind::fetch_result:
            results_.push(std::move(e));
            break;
        case work_kind::poll:
            polls_.push(std::move(e));
            break;
        case work_kind::submit:
            submits_.push(std::move(e));
            break;
        case work_kind::download:
            downloads_.push(std::move(e));
            break;
        case work_kind::none:
            break;
        }
    }
}

template <typename Q>
void dispatch_queue::drop_stale(Q& q) {
    while (!q.empty()) {
        const entry& e = [&]() -> const entry& {
            if constexpr (requires { q.top(); })
                return q.top();
            else
                return q.front();
        }();
        if (live(e))
            return;
        q.pop();
    }
}

std::optional<dispatch_queue::item> dispatch_queue::take(const entry& e) {
    live_.erase(e.job_id);
    return item{e.job_id, e.kind, e.not_before};
}

bool dispatch_queue::has_budgeted_ready(bool submits_allowed) {
    drop_stale(results_);
    drop_stale(polls_);
    if (!results_.empty() || !polls_.empty())
        return true;
    if (!submits_allowed)
        return false;
    drop_stale(submits_);
    return !submits_.empty();
}

std::optional<dispatch_queue::item> dispatch_queue::pop_budgeted(bool submits_allowed,
                                                                 time_point urgent_before) {
    drop_stale(results_);
    if (!results_.empty()) {
        entry e = std::move(results_.front());
        results_.pop();
        return take(e);
    }
    drop_stale(polls_);
    if (submits_allowed)
        drop_stale(submits_);
    bool submit_waits = submits_allowed && !submits_.empty();
    bool submit_turn = submit_waits && polls_since_submit_ >= polls_per_submit;
    if (!polls_.empty() && (!submit_turn || polls_.top().deadline < urgent_before)) {
        entry e = polls_.top();
        polls_.pop();
        if (submit_waits)
            ++polls_since_submit_;
        return take(e);
    }
    if (submit_waits) {
        entry e = submits_.top();
        submits_.pop();
        polls_since_submit_ = 0;
        return take(e);
    }
    return std::nullopt;
}

bool dispatch_queue::has_ready_submits() {
    drop_stale(submits_);
    return !submits_.empty();
}

std::optional<dispatch_queue::item> dispatch_queue::pop_download() {
    drop_stale(downloads_);
    if (downloads_.empty())
        return std::nullopt;
    entry e = std::move(downloads_.front());
    downloads_.pop();
    return take(e);
}

std::optional<time_point> dispatch_queue::next_due() {
    while (!waiting_.empty() && !live(waiting_.top()))
        waiting_.pop();
    if (waiting_.empty())
        return std::nullopt;
    return waiting_.top().not_before;
}

} // namespace klingd::core
