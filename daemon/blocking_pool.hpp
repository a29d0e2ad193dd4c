// Blocking file-system work (realpath, open, hashing or encoding whole files) kept off the
// event loop, each call with a deadline. A call that outlives its deadline is given up:
// the caller goes on with nullopt while the thread stays in the kernel (a hung network or
// FUSE mount) for as long as the kernel keeps it; the loop never waits for it. Threads that
// are still stuck when the pool closes are left behind (detached) and deliver nothing, so
// klingd stops on time; the process's exit ends them.
#pragma once

#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>

namespace klingd::daemon {

class blocking_pool {
public:
    // threads run the calls; results come back on ex (the event loop's).
    blocking_pool(boost::asio::any_io_executor ex, std::size_t threads);
    // close(), then nothing more: the threads keep what they share until they end.
    ~blocking_pool();
    // Drops the calls not started; the running ones deliver nothing from now on and are not
    // waited for (see above). Call it before the io_context its executor belongs to shuts
    // down, so that no thread posts to a loop that is going. Later calls to run() give
    // nullopt at once.
    void close();
    blocking_pool(const blocking_pool&) = delete;
    blocking_pool& operator=(const blocking_pool&) = delete;

    // fn() on a pool thread; its result, or nullopt when it did not end within deadline
    // (the wait for a free thread counts) or threw (make it return its errors instead). fn must own
    // what it reads (capture by value): it may run after the caller has gone.
    template <class T>
    boost::asio::awaitable<std::optional<T>> run(std::function<T()> fn,
                                                 std::chrono::milliseconds deadline);

    // Calls running or waiting for a thread now (given up ones included, until they end).
    std::size_t busy() const;

private:
    struct shared;
    // Queues task; it runs on a pool thread unless the pool closes first. False when
    // the pool is closed already (task dropped).
    bool submit(std::function<void()> task);
    // Runs deliver on the loop's executor unless the pool has gone (then drops it).
    static void deliver(const std::shared_ptr<shared>& s, std::function<void()> deliver);

    template <class T>
    struct call {
        std::optional<T> out;
        boost::asio::steady_timer* wake = nullptr; // the waiting caller's, while it waits
        std::atomic<bool> wanted{true};            // false once the caller has stopped waiting
    };
    // Queues fn for c (false when closed). Not in the coroutine: GCC 12 destroys a
    // lambda's moved captures twice inside one.
    template <class T>
    bool start(std::shared_ptr<call<T>> c, std::function<T()> fn) {
        return submit([s = shared_, c, fn = std::move(fn)]() {
            if (!c->wanted)
                return; // given up while it waited for a thread: not read for nobody
            auto v = std::make_shared<std::optional<T>>();
            try {
                v->emplace(fn());
            } catch (...) {
                // Nothing to give: the caller hears nullopt now rather than at its deadline.
            }
            deliver(s, [c, v]() {
                c->out = std::move(*v);
                if (c->wake)
                    c->wake->cancel();
            });
        });
    }

    std::shared_ptr<shared> shared_;
};

template <class T>
boost::asio::awaitable<std::optional<T>> blocking_pool::run(std::function<T()> fn,
                                                            std::chrono::milliseconds deadline) {
    auto ex = co_await boost::asio::this_coro::executor;
    boost::asio::steady_timer timer(ex, deadline);
    auto c = std::make_shared<call<T>>();
    c->wake = &timer;
    // Whatever ends this wait (the result, the deadline, the frame destroyed at shutdown),
    // no late result touches the timer afterwards: deliveries run on this same loop.
    struct unhook {
        std::shared_ptr<call<T>> c;
        ~unhook() {
            c->wake = nullptr;
            c->wanted = false;
        }
    } guard{c};
    if (!start<T>(c, std::move(fn)))
        co_return std::nullopt;
    boost::system::error_code ec;
    co_await timer.async_wait(boost::asio::redirect_error(boost::asio::use_awaitable, ec));
    co_return std::move(c->out);
}

} // namespace klingd::daemon
