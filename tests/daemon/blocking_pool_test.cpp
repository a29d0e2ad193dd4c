// The pool that keeps blocking file work (local inputs' checks and upload reads) off the
// event loop: a result comes back on the loop; a call past its deadline is given up while
// the loop goes on; a call that threw answers at once; the pool goes without waiting for
// a call stuck in the kernel, and that call's late end delivers nothing.
#include "daemon/blocking_pool.hpp"

#include <atomic>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <future>
#include <gtest/gtest.h>
#include <stdexcept>
#include <thread>

namespace {

using namespace klingd;
using namespace std::chrono_literals;
namespace asio = boost::asio;

// Runs pool.run(fn, deadline) on io to its end: what it gave.
template <class T>
std::optional<std::optional<T>> run_to_end(asio::io_context& io, daemon::blocking_pool& pool,
                                           std::function<T()> fn,
                                           std::chrono::milliseconds deadline) {
    std::optional<std::optional<T>> got;
    asio::co_spawn(io, pool.run<T>(std::move(fn), deadline),
                   [&](std::exception_ptr e, std::optional<T> v) {
                       if (!e)
                           got = std::move(v);
                   });
    io.restart();
    io.run();
    return got;
}

// Set when the object owning it (captured by a call) is destroyed: the call has ended.
struct ended_signal {
    std::promise<void> p;
    ~ended_signal() { p.set_value(); }
};

TEST(blocking_pool, gives_the_result_back_on_the_loop) {
    asio::io_context io;
    daemon::blocking_pool pool(io.get_executor(), 2);
    auto loop = std::this_thread::get_id();
    std::thread::id ran_on;
    auto got = run_to_end<std::string>(
        io, pool,
        [&ran_on] {
            ran_on = std::this_thread::get_id();
            return std::string("hashed");
        },
        10s);
    ASSERT_TRUE(got.has_value());
    ASSERT_TRUE(got->has_value());
    EXPECT_EQ(**got, "hashed");
    EXPECT_NE(ran_on, loop); // not on the loop's thread
}

TEST(blocking_pool, a_call_past_its_deadline_is_given_up_while_the_loop_goes_on) {
    asio::io_context io;
    daemon::blocking_pool pool(io.get_executor(), 1);
    std::promise<void> release;
    auto released = release.get_future().share();
    auto ended = std::make_shared<ended_signal>();
    auto ended_future = ended->p.get_future();
    // The loop's own work while the call hangs: a timer that must fire meanwhile.
    bool loop_ran = false;
    asio::steady_timer other(io, 20ms);
    other.async_wait([&](boost::system::error_code) { loop_ran = true; });
    auto got = run_to_end<int>(
        io, pool,
        [released, ended] {
            released.wait(); // a hung mount
            return 7;
        },
        300ms);
    ASSERT_TRUE(got.has_value());
    EXPECT_FALSE(got->has_value()); // given up
    EXPECT_TRUE(loop_ran);
    EXPECT_EQ(pool.busy(), 1u); // the thread is still in it
    ended.reset();
    release.set_value();
    ASSERT_EQ(ended_future.wait_for(30s), std::future_status::ready);
    // Its late result reaches the loop and touches nothing of the caller that has gone.
    EXPECT_EQ(pool.busy(), 0u);
    io.restart();
    EXPECT_EQ(io.poll(), 1u);
    // The pool serves the next call.
    auto next = run_to_end<int>(
        io, pool, [] { return 8; }, 10s);
    ASSERT_TRUE(next && *next);
    EXPECT_EQ(**next, 8);
}

TEST(blocking_pool, a_call_given_up_before_a_thread_was_free_is_not_run) {
    asio::io_context io;
    daemon::blocking_pool pool(io.get_executor(), 1);
    std::promise<void> release;
    auto released = release.get_future().share();
    std::promise<void> started;
    auto started_future = started.get_future();
    std::optional<std::optional<int>> first;
    asio::co_spawn(io,
                   pool.run<int>(
                       [released, &started] {
                           started.set_value();
                           released.wait(); // the only thread, stuck
                           return 1;
                       },
                       60s),
                   [&](std::exception_ptr, std::optional<int> v) { first = v; });
    while (started_future.wait_for(0s) != std::future_status::ready)
        io.run_one_for(100ms);
    // The second waits for the thread, past its deadline.
    std::atomic<bool> second_ran{false};
    auto ended = std::make_shared<ended_signal>();
    auto ended_future = ended->p.get_future();
    std::optional<std::optional<int>> second;
    asio::co_spawn(io,
                   pool.run<int>(
                       [&second_ran, ended] {
                           second_ran = true;
                           return 2;
                       },
                       200ms),
                   [&](std::exception_ptr, std::optional<int> v) { second = v; });
    while (!second)
        io.run_one_for(100ms);
    EXPECT_FALSE(second->has_value());
    ended.reset();
    release.set_value();
    // The thread comes free, finds the second no longer wanted and drops it.
    ASSERT_EQ(ended_future.wait_for(30s), std::future_status::ready);
    EXPECT_FALSE(second_ran);
    while (!first)
        io.run_one_for(100ms);
    ASSERT_TRUE(first->has_value());
    EXPECT_EQ(**first, 1);
}

TEST(blocking_pool, a_call_that_throws_answers_at_once) {
    asio::io_context io;
    daemon::blocking_pool pool(io.get_executor(), 1);
    auto start = std::chrono::steady_clock::now();
    auto got = run_to_end<int>(
        io, pool, []() -> int { throw std::runtime_error("no"); }, 60s);
    ASSERT_TRUE(got.has_value());
    EXPECT_FALSE(got->has_value());
    EXPECT_LT(std::chrono::steady_clock::now() - start, 30s); // not at its deadline
}

TEST(blocking_pool, goes_without_waiting_for_a_stuck_call_which_then_delivers_nothing) {
    asio::io_context io;
    std::promise<void> release;
    auto released = release.get_future().share();
    std::promise<void> started;
    auto started_future = started.get_future();
    auto ended = std::make_shared<ended_signal>();
    auto ended_future = ended->p.get_future();
    std::optional<std::optional<int>> got; // outlives the pool: the handler refers to it
    {
        daemon::blocking_pool pool(io.get_executor(), 1);
        asio::co_spawn(io,
                       pool.run<int>(
                           [released, ended, &started] {
                               started.set_value();
                               released.wait();
                               return 1;
                           },
                           60s),
                       [&](std::exception_ptr, std::optional<int> v) { got = v; });
        // Run the loop until the call is on its thread, then let the pool go (klingd
        // stopping) with the call still stuck: the destructor returns.
        while (started_future.wait_for(0s) != std::future_status::ready)
            io.run_one_for(100ms);
        EXPECT_FALSE(got.has_value());
    }
    ended.reset();
    release.set_value();
    ASSERT_EQ(ended_future.wait_for(30s), std::future_status::ready);
    // What the call returned is dropped, not posted to the loop; the waiting caller's
    // frame goes with the loop's pending work.
    io.restart();
    EXPECT_EQ(io.poll(), 0u);
    EXPECT_FALSE(got.has_value());
}

TEST(blocking_pool, once_closed_a_stuck_call_delivers_nothing_and_new_calls_answer_at_once) {
    // klingd stopping: the engine closes the pool before the loop's pending work is
    // dropped, while the pool object itself lives on until the engine goes.
    asio::io_context io;
    daemon::blocking_pool pool(io.get_executor(), 1);
    std::promise<void> release;
    auto released = release.get_future().share();
    std::promise<void> started;
    auto started_future = started.get_future();
    auto ended = std::make_shared<ended_signal>();
    auto ended_future = ended->p.get_future();
    std::optional<std::optional<int>> got;
    asio::co_spawn(io,
                   pool.run<int>(
                       [released, ended, &started] {
                           started.set_value();
                           released.wait();
                           return 1;
                       },
                       60s),
                   [&](std::exception_ptr, std::optional<int> v) { got = v; });
    while (started_future.wait_for(0s) != std::future_status::ready)
        io.run_one_for(100ms);
    pool.close();
    ended.reset();
    release.set_value();
    ASSERT_EQ(ended_future.wait_for(30s), std::future_status::ready);
    EXPECT_FALSE(got.has_value()); // still waiting: nothing was delivered
    // A call made after close() is not queued: it answers nullopt without its deadline.
    std::atomic<bool> ran{false};
    auto start = std::chrono::steady_clock::now();
    std::optional<std::optional<int>> late;
    asio::co_spawn(io,
                   pool.run<int>(
                       [&ran] {
                           ran = true;
                           return 2;
                       },
                       60s),
                   [&](std::exception_ptr, std::optional<int> v) { late = v; });
    while (!late && std::chrono::steady_clock::now() - start < 30s)
        io.run_one_for(100ms);
    ASSERT_TRUE(late.has_value());
    EXPECT_FALSE(late->has_value());
    EXPECT_FALSE(ran);
    EXPECT_LT(std::chrono::steady_clock::now() - start, 30s);
    EXPECT_FALSE(got.has_value()); // the stuck call's result never arrived
}

} // namespace
