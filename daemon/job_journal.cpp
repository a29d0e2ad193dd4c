// The journal's writes and its crash rules.
#include "daemon/job_journal.hpp"

namespace klingd::daemon {

core::result<void> job_journal::write(std::vector<storage::job_store::change> changes) {
    auto offset = clock_.wall_offset(); // to the database on the wall clock
    for (auto& c : changes) {
        c.j = core::shifted(std::move(c.j), offset);
        for (auto& e : c.history)
            e.at += offset;
    }
    try {
        store_.save_many(changes);
    } catch (const storage::storage_error& e) {
        return core::error(storage::errc_of(e), e.what());
    }
    return {};
}

core::result<void> job_journal::write_now(const core::job& j,
                                          std::optional<storage::history_entry> line) {
    std::vector<storage::history_entry> h;
    if (auto p = history_.find(j.id); p != history_.end())
        h = p->second;
    if (line)
        h.push_back(*line);
    if (auto r = write({{j, std::move(h)}}); !r)
        return r;
    dirty_.erase(j.id);
    history_.erase(j.id);
    return {};
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
    if (auto d = dirty_.find(j.id); d != dirty_.end())
        d->second = j; // its last state is still to be written
    lazy_.erase(j.id);
}

const core::job* job_journal::retired(const std::string& id) const {
    auto d = dirty_.find(id);
    return d != dirty_.end() && d->second ? &*d->second : nullptr;
}

void job_journal::include_lazy() {
    for (const auto& id : lazy_)
        dirty_.try_emplace(id);
    lazy_.clear();
}

core::result<void> job_journal::flush(const lookup& active) {
    if (dirty_.empty())
        return {};
    std::vector<storage::job_store::change> changes;
    changes.reserve(dirty_.size());
    for (auto& [id, copy] : dirty_) {
        const core::job* j = copy ? &*copy : active(id);
        if (!j)
            continue;
        auto h = history_.find(id);
        changes.push_back(
            {*j, h == history_.end() ? std::vector<storage::history_entry>{} : h->second});
    }
    auto n = changes.size();
    if (auto r = write(std::move(changes)); !r)
        return core::error(r.error().code, std::to_string(n) + " job updates: " + r.error().detail);
    dirty_.clear();
    history_.clear();
    return {};
}

} // namespace klingd::daemon
