// Runs an awaitable to completion on an io_context of its own and returns its
// value (rethrowing its exception): for tests of asynchronous parts in plain code.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <exception>
#include <optional>
#include <utility>

namespace klingd::test {

template <class T>
T await(boost::asio::io_context& io, boost::asio::awaitable<T> a) {
    std::optional<T> out;
    std::exception_ptr failure;
    bool done = false;
    boost::asio::co_spawn(io, std::move(a), [&](std::exception_ptr e, T v) {
        done = true;
        failure = e;
        if (!e)
            out.emplace(std::move(v));
    });
    io.restart();
    while (!done && io.run_one() > 0) {
    }
    if (failure)
        std::rethrow_exception(failure);
    return std::move(*out);
}

template <class T>
T await(boost::asio::awaitable<T> a) {
    boost::asio::io_context io;
    return await(io, std::move(a));
}

} // namespace klingd::test
