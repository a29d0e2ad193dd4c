// Subscribers are held weakly: a closed watcher disappears at the next publish.
#include "daemon/event_hub.hpp"

#include <algorithm>

namespace klingd::daemon {

std::shared_ptr<event_hub::subscriber> event_hub::subscribe(const boost::asio::any_io_executor& ex,
                                                            std::string job_filter) {
    auto s = std::make_shared<subscriber>(ex);
    s->wake.expires_at(boost::asio::steady_timer::time_point::max());
    s->job_filter = std::move(job_filter);
    subs_.push_back(s);
    return s;
}

void event_hub::publish(const std::string& job_id, const std::string& line) {
    std::erase_if(subs_, [](const auto& w) { return w.expired(); });
    for (auto& w : subs_) {
        auto s = w.lock();
        if (!s || (!s->job_filter.empty() && s->job_filter != job_id))
            continue;
        if (s->queue.size() >= max_queue) {
            s->overflowed = true;
        } else {
            s->queue.push_back(line);
        }
        s->wake.cancel();
    }
}

} // namespace klingd::daemon
