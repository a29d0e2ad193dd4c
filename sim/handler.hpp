// The HTTP face of the service, with no socket in it: one request and the time
// in, one answer (and what the transport must do with it) out. Routes the v2
// API, the media files and the /sim/ control endpoints.
#pragma once

#include "sim/payload_body.hpp"
#include "sim/service.hpp"

#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>

namespace klingd::sim {

using http_request = boost::beast::http::request<boost::beast::http::string_body>;
using http_response = boost::beast::http::response<payload_body>;

struct reply {
    http_response response;
    endpoint kind = endpoint::other;
    bool control = false;  // a /sim/ request: never counted nor faulted
    bool reset = false;    // close the connection abruptly, send nothing
    bool truncate = false; // send the header and half the body, then close
    bool trickle = false;  // send the body at 1 KiB/s: 512 bytes each half second
    double delay_s = 0;    // real seconds to wait before sending
};

// Never fails: every request gets an answer, or a fault the service chose for it.
reply handle_request(const http_request& req, service& svc, time_point now);

} // namespace klingd::sim
