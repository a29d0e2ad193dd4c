// Fan-out of job events to watchers of GET /v1/events: each subscriber has its
// own bounded queue and a timer used as a wake-up signal. A watcher that falls
// too far behind is cut off rather than let memory grow.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <deque>
#include <memory>
#include <string>
#include <vector>

namespace klingd::daemon {

class event_hub {
public:
    struct subscriber {
        explicit subscriber(const boost::asio::any_io_executor& ex) : wake(ex) {}
        std::deque<std::string> queue; // NDJSON lines
        boost::asio::steady_timer wake;
        std::string job_filter; // only this job's events, or all when empty
        bool overflowed = false;
    };

    static constexpr std::size_t max_queue = 10000;

    std::shared_ptr<subscriber> subscribe(const boost::asio::any_io_executor& ex,
                                          std::string job_filter);
    // Queues line for every subscriber (whose filter matches job_id) and wakes it.
    void publish(const std::string& job_id, const std::string& line);

private:
    std::vector<std::weak_ptr<subscriber>> subs_;
};

} // namespace klingd::daemon
