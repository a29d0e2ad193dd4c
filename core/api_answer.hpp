// What a Segmind v2 answer means: its class by HTTP code, and the fields of a
// submit, status or result body. Server data is untrusted: bodies may be
// malformed, URLs must be http(s), and nothing here throws.
#pragma once

#include "core/job.hpp"

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace klingd::core {

// The outcome of one HTTP exchange, as the daemon's client reports it.
struct http_outcome {
    enum class transport {
        ok,       // a complete answer arrived (any status)
        not_sent, // DNS, connect or TLS handshake failed: the request never left
        lost,     // the request was (maybe) sent but no complete answer came: timeout, reset,
                  // truncation
    };
    transport how = transport::ok;
    int status = 0;
    std::string body;
    std::string retry_after; // header values, empty when absent
    std::string reset_at;    // x-rate-limit-reset-at-utc
    std::string message;     // the transport error, for humans
    bool too_large = false;  // the body exceeded the configured limit and was not read
    bool local_io = false;   // writing the local file failed (disk full, read-only, I/O error)
    std::string partial;     // lost: the part of a 2xx answer's body that came before the cut
};

enum class answer_class {
    ok,           // 2xx
    bad_request,  // 400
    unauthorized, // 401: the key is wrong for every request
    forbidden,    // 403
    not_found,    // 404: unknown model on submit, unknown or expired request on GET
    no_credits,   // 406
    gone,         // 410: model retired
    failed,       // 422: the request FAILED
    rate_limited, // 429
    server_error, // 5xx
    other,        // any other code
};

answer_class classify(int http_status);

// The "error" field of a JSON body, else the body itself cut to 300 bytes; never empty.
std::string error_detail(int http_status, std::string_view body);

struct submit_fields {
    std::string request_id;
    std::string status_url;
    std::string response_url;
};

// Reads a 2xx submit body. When status_url or response_url is missing, or points
// where the API key may not go, it is built from base_url and the request id.
// nullopt when there is no usable request_id.
std::optional<submit_fields> parse_submit(std::string_view body, std::string_view base_url);
// The request id in the first part of a 2xx submit body that was cut short, when that
// part holds it whole ("request_id": "..." with its closing quote); the URLs are built
// from base_url (the rest of the answer is not trusted).
std::optional<submit_fields> parse_cut_submit(std::string_view partial, std::string_view base_url);

// The kinds of API request klingd makes.
enum class request_kind { submit, status, result, upload };
std::string_view to_string(request_kind k);

// The status of a request at the API, as a status answer reports it.
enum class remote_status { unknown, queued, processing, completed, failed };
std::string_view to_string(remote_status s);

// The status a status (or result) body reports; the API's aliases (SUCCEEDED,
// IN_PROGRESS, ...) are mapped, any case. unknown when the body has no known status.
remote_status parse_status(std::string_view body);

// The media URLs a result body points at: "output" as a string, an array of
// strings, or objects with "url"; also "images"/"video" shapes. Only http(s) URLs.
std::vector<std::string> output_urls(std::string_view body);

// When a 429 lets us try again: the later of Retry-After (seconds or HTTP date)
// and x-rate-limit-reset-at-utc (ISO 8601 UTC, fractional seconds optional, or
// epoch seconds). nullopt when neither is present and parseable, or the time is
// absurd (more than an hour away).
std::optional<time_point> rate_limit_until(std::string_view retry_after, std::string_view reset_at,
                                           time_point now);

// The extension (without dot) for a media file: from the URL's path when it is a
// known media type, else from the content type, else "bin". Never from anything else.
std::string media_extension(std::string_view url, std::string_view content_type);

} // namespace klingd::core
