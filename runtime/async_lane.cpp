// Turns are handed from one holder to the next waiting, in order.
#include "runtime/async_lane.hpp"

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace klingd::lane {

namespace asio = boost::asio;

asio::awaitable<async_lane::turn> async_lane::wait_turn() {
    if (busy_) {
        auto t = std::make_shared<asio::steady_timer>(co_await asio::this_coro::executor,
                                                      asio::steady_timer::time_point::max());
        waiting_.push_back(t);
        boost::system::error_code ec;
        co_await t->async_wait(asio::redirect_error(asio::use_awaitable, ec));
        // release() handed the lane over: it is still busy, and ours.
    }
    busy_ = true;
    co_return turn(*this);
}

void async_lane::release() {
    if (waiting_.empty()) {
        busy_ = false;
        return;
    }
    auto next = std::move(waiting_.front());
    waiting_.pop_front();
    next->cancel();
}

} // namespace klingd::lane
