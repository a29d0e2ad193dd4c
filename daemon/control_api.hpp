// The control API (interface.md, "Control socket"): a request handler that is a
// plain function of the request and the engine, with no socket in it.
#pragma once

#include "daemon/engine.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>
#include <string>
#include <variant>

namespace klingd::daemon {

using control_request = boost::beast::http::request<boost::beast::http::string_body>;
using control_response = boost::beast::http::response<boost::beast::http::string_body>;

// Who is asking, for the log of state-changing requests.
struct peer_info {
    int pid = -1;
    int uid = -1;
    int gid = -1;
    // Its gid and supplementary groups (SO_PEERGROUPS), when the socket tells them.
    std::optional<std::vector<gid_t>> groups;
};

// GET /v1/events: the server streams job changes (NDJSON) to the client, of one job
// when job_filter is set.
struct event_stream {
    std::string job_filter;
};

// What a request gets: an answer, or the event stream.
using control_outcome = std::variant<control_response, event_stream>;

// Routes a request through the route table: every error is an answer, never an
// exception (a database that cannot answer is a 503). req must outlive the call.
boost::asio::awaitable<control_outcome> route_request(const control_request& req, engine& e,
                                                      const peer_info& peer);

// A JSON error answer {"error": message}.
control_response error_response(unsigned version, boost::beast::http::status status,
                                const std::string& message);

// Prometheus text exposition of the engine's counters and the jobs' counts.
// counts: jobs by state and model (null when the store did not answer); nodes: the
// cluster's nodes (null on a single host, or when the database cannot list them).
std::string render_metrics(engine& e, const storage::state_model_counts* counts,
                           const std::vector<storage::node_row>* nodes = nullptr);

} // namespace klingd::daemon
