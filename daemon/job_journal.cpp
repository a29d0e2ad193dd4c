// The journal's writes, their order and its crash rules.
#include "daemon/job_journal.hpp"

#include <fmt/format.h>

namespace klingd::daemon {

namespace asio = boost::asio;

asio::awaitable<core::result<void>> job_journal::save(std::vector<storage::job_change> changes) {
    auto offset = clock_.wall_offset(); // to the database on the wall clock
    for (auto& c : changes) {
        c.j = core::shifted(std::move(c.j), offset);
        for (auto& e : c.history)
            e.at += offset;
    }
    auto r = co_await repo_.save(std::move(changes));
    if (!r)
        co_return r.error();
    if (!r->empty()) {
        for (auto& id : *r) {
            dirty_.erase(id);
            flushing_.erase(id);
            history_.erase(id);
            lazy_.erase(id);
        }
        if (on_claim_lost)
            on_claim_lost(*r);
        co_return core::error(
            core::errc::claim_lost,
            fmt::format("this node no longer holds the claim of {} job(s) (first: "
                        "{}): another node carries them on",
                        r->size(), r->front()));
    }
    co_return core::result<void>{};
}

asio::awaitable<core::result<void>> job_journal::write(std::vector<storage::job_change> changes) {
    auto turn = co_await lane_.wait_turn();
    auto r = co_await save(std::move(changes));
    if (!r && r.error() == core::errc::claim_lost)
        co_return core::result<void>{}; // the others are written; those are another node's now
    co_return r;
}

void job_journal::give_back(const std::string& id, std::vector<storage::history_entry> lines) {
    if (lines.empty())
        return;
    auto& now = history_[id];
    lines.insert(lines.end(), std::make_move_iterator(now.begin()),
                 std::make_move_iterator(now.end()));
    now = std::move(lines);
}

asio::awaitable<core::result<void>>
job_journal::write_now(core::job j, std::optional<storage::history_entry> line,
                       std::optional<storage::spend_charge> charge,
                       std::optional<std::int64_t> refund_attempt,
                       std::optional<storage::hook_event> event) {
    auto turn = co_await lane_.wait_turn();
    if (!event && core::is_terminal(j.state)) // its final state's, whose write failed
        if (auto e = events_.find(j.id); e != events_.end()) {
            event = std::move(e->second);
            events_.erase(e);
        }
    std::vector<storage::history_entry> owed;
    if (auto p = history_.find(j.id); p != history_.end()) {
        owed = std::move(p->second);
        history_.erase(p);
    }
    std::optional<std::optional<core::job>> was_dirty;
    if (auto d = dirty_.find(j.id); d != dirty_.end()) {
        was_dirty = std::move(d->second);
        dirty_.erase(d);
    }
    auto h = owed;
    if (line)
        h.push_back(*line);
    auto id = j.id;
    std::vector<storage::job_change> change;
    auto kept = event;
    auto kept_refund = refund_attempt;
    if (!refund_attempt) // one whose write failed before goes with this one
        if (auto f = refunds_.find(j.id); f != refunds_.end()) {
            refund_attempt = f->second;
            refunds_.erase(f);
        }
    change.push_back(
        {std::move(j), std::move(h), std::move(charge), refund_attempt, std::move(event)});
    auto r = co_await save(std::move(change));
    if (!r && r.error() == core::errc::claim_lost)
        co_return r; // another node's job now: nothing of it is written from here
    if (!r) {
        if (kept)
            events_.insert_or_assign(id, std::move(*kept));
        // A refund is not lost with a failed write: it goes with the job's next one.
        if (kept_refund || refund_attempt)
            refunds_.insert_or_assign(id, *(kept_refund ? kept_refund : refund_attempt));
        give_back(id, std::move(owed));
        if (was_dirty)
            dirty_.try_emplace(id, std::move(*was_dirty));
    }
    co_return r;
}

void job_journal::defer(const std::string& id, std::optional<storage::history_entry> line) {
    if (line)
        history_[id].push_back(std::move(*line));
    dirty_.insert_or_assign(id, std::nullopt); // the state in memory, not an old copy
}

void job_journal::defer_lazy(const std::string& id) {
    lazy_.insert(id);
}

void job_journal::retire(const core::job& j) {
    // Its last state is still to be written (or may be, if the flush on its way fails).
    if (dirty_.count(j.id) || flushing_.count(j.id))
        dirty_.insert_or_assign(j.id, j);
    lazy_.erase(j.id);
}

const core::job* job_journal::retired(const std::string& id) const {
    for (const auto* m : {&dirty_, &flushing_})
        if (auto d = m->find(id); d != m->end() && d->second)
            return &*d->second;
    return nullptr;
}

void job_journal::include_lazy() {
    for (const auto& id : lazy_)
        dirty_.try_emplace(id);
    lazy_.clear();
}

asio::awaitable<core::result<void>> job_journal::flush() {
    if (dirty_.empty() && !lane_.busy())
        co_return core::result<void>{};
    auto turn = co_await lane_.wait_turn();
    if (dirty_.empty()) // the flush before this one took it all
        co_return core::result<void>{};
    flushing_.swap(dirty_);
    auto lines = std::move(history_);
    history_.clear();
    std::vector<storage::job_change> changes;
    changes.reserve(flushing_.size());
    for (auto& [id, copy] : flushing_) {
        const core::job* j = copy ? &*copy : active_(id);
        if (!j)
            continue;
        auto h = lines.find(id);
        changes.push_back(
            {*j, h == lines.end() ? std::vector<storage::history_entry>{} : h->second});
        if (auto e = events_.find(id); e != events_.end() && core::is_terminal(j->state))
            changes.back().event = e->second;
        if (auto f = refunds_.find(id); f != refunds_.end())
            changes.back().refund_attempt = f->second;
    }
    auto n = changes.size();
    auto r = co_await save(std::move(changes));
    if (!r && r.error() == core::errc::claim_lost)
        r = core::result<void>{}; // the others are written; those are another node's now
    if (!r) {
        // Kept: older than anything deferred while the write was on its way.
        for (auto& [id, copy] : flushing_)
            dirty_.try_emplace(id, std::move(copy));
        for (auto& [id, h] : lines)
            give_back(id, std::move(h));
        flushing_.clear();
        co_return core::error(r.error().code,
                              std::to_string(n) + " job updates: " + r.error().detail);
    }
    for (auto& [id, copy] : flushing_) {
        events_.erase(id); // written with the state it belongs to
        refunds_.erase(id);
    }
    flushing_.clear();
    co_return r;
}

} // namespace klingd::daemon
