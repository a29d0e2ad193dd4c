// One at a time, in the order asked: a lane that coroutines on one event loop take
// turns on (the journal's writes, the spool's intake). Not thread-safe: one loop.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>
#include <deque>
#include <memory>

namespace klingd::lane {

class async_lane {
public:
    // Released when it leaves scope, also when its coroutine is dropped at shutdown.
    class turn {
    public:
        explicit turn(async_lane& l) : lane_(&l) {}
        turn(turn&& o) noexcept : lane_(o.lane_) { o.lane_ = nullptr; }
        turn& operator=(turn&&) = delete;
        ~turn() {
            if (lane_)
                lane_->release();
        }

    private:
        async_lane* lane_;
    };

    // Waits until every turn asked for before has ended.
    boost::asio::awaitable<turn> wait_turn();
    bool busy() const { return busy_; }

private:
    void release();

    bool busy_ = false;
    std::deque<std::shared_ptr<boost::asio::steady_timer>> waiting_;
};

} // namespace klingd::lane
