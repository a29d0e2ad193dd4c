// The client side of klingd's control socket, shared by klingctl and the tests:
// one HTTP/1.1 exchange over the Unix socket (Beast, JSON in and out), request
// targets built with Boost.URL, and a subscription to GET /v1/events that reads
// job changes as they happen. Blocking calls, each with a deadline.
#pragma once

#include "core/error.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/beast/http/verb.hpp>
#include <boost/json/value.hpp>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace klingd::client {

struct reply {
    int status = 0;
    boost::json::value body; // null when the answer is not JSON
    std::string text;
};

// A field of a JSON object as text: strings as they are, other values serialised, ""
// when absent, null, or v is no object.
std::string field(const boost::json::value& v, std::string_view key);

// "/v1/jobs/ID" or "/v1/jobs/ID/ACTION", the id percent-encoded.
std::string job_target(std::string_view id, std::string_view action = {});
// path?k=v&... with each key and value percent-encoded; empty values are left out.
std::string with_query(std::string_view path,
                       const std::vector<std::pair<std::string_view, std::string_view>>& params);

class control_client {
public:
    explicit control_client(std::string socket,
                            std::chrono::milliseconds timeout = std::chrono::seconds(30));

    // One request and its answer; errc::unreachable when klingd cannot be reached or
    // did not answer in time (the detail says what to check).
    // timeout, when given, replaces the client's for this call.
    core::result<reply> call(boost::beast::http::verb method, std::string_view target,
                             std::string_view body = {},
                             std::optional<std::chrono::milliseconds> timeout = std::nullopt);
    const std::string& socket() const { return socket_; }

private:
    std::string socket_;
    std::chrono::milliseconds timeout_;
};

// GET /v1/events[?id=JOB]: open() returns once klingd has answered, so every
// change after that is in the stream.
class event_subscription {
public:
    // errc::unreachable when the socket cannot be used; errc::streams_full when klingd
    // keeps as many streams open as it will (503); errc::bad_request when it refused the
    // stream otherwise (the detail quotes its answer).
    static core::result<event_subscription>
    open(const std::string& socket, std::string_view job_filter = {},
         std::chrono::milliseconds timeout = std::chrono::seconds(10));
    event_subscription(event_subscription&&) noexcept;
    event_subscription& operator=(event_subscription&&) noexcept;
    ~event_subscription();

    // The next line of the stream (a JSON object: a job change, a heartbeat, an
    // overflow); nullopt when none came within timeout; errc::stream_ended when
    // klingd closed the stream.
    core::result<std::optional<boost::json::value>> next(std::chrono::milliseconds timeout);

private:
    event_subscription();
    struct impl;
    std::unique_ptr<impl> impl_;
};

} // namespace klingd::client
