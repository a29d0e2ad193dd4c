// The one URL type: Boost.URL. http_url is a boost::urls::url that klingd may
// send a request to (an absolute http(s) URL with a host it accepts and a valid
// port); it answers what the HTTP client needs (origin, Host header, target) and
// carries the rule for which URLs may receive the API key.
#pragma once

#include "core/error.hpp"

#include <boost/url/url.hpp>
#include <cstdint>
#include <string>
#include <string_view>

namespace klingd::core {

class http_url {
public:
    // The URL in s, or why it is not one klingd sends requests to (errc::url_*):
    // scheme http or https; a host that is a name of letters, digits and "._~-", an
    // IPv4 address or a bracketed IPv6 address; a port from 1 to 65535 or none; no
    // user information; at most 8192 characters, none a space or a control
    // character. Characters a URL may not hold as they are (such as '|' or UTF-8)
    // are percent-encoded; the fragment is dropped; the host is lower-cased.
    static result<http_url> parse(std::string_view s);

    const boost::urls::url& get() const { return url_; }
    bool tls() const { return url_.scheme_id() == boost::urls::scheme::https; }
    // The host without brackets ("::1" for [::1]), lower-case.
    std::string host() const;
    std::uint16_t port() const { return port_; }
    // The path and query, at least "/".
    std::string target() const;
    // "https://host:port", the key of a connection pool.
    std::string origin() const;
    // The Host header value (the port only when it is not the scheme's).
    std::string host_header() const;
    std::string_view text() const { return url_.buffer(); }

    // The same URL with its path and query replaced by target ("/v2/requests/ID/status").
    http_url with_target(std::string_view path) const;

private:
    boost::urls::url url_;
    std::uint16_t port_ = 0;
};

// True when u may be sent the API key: same origin as base, or an https URL on
// the same parent domain as base's host (api.segmind.com -> queue.segmind.com).
bool may_carry_api_key(const http_url& u, const http_url& base);

// "localhost", 127.0.0.0/8 or ::1: where plain http:// is allowed.
bool is_loopback_host(std::string_view host);

// Where a redirect from `from` leads (location: a Location header's value, absolute or
// relative to from), when klingd may follow it: https, or http from a plain-http
// loopback URL to a loopback host only (never down from https, never from elsewhere to
// a local service); else why not (errc::url_not_http, or why the URL is refused).
result<http_url> redirect_target(const http_url& from, std::string_view location);

// The absolute local path a file:// URL names ("file:///srv/media/a%20b.png" gives
// "/srv/media/a b.png"), or why it is not one klingd takes: no host but an empty one or
// "localhost", no user, port, query or fragment, an absolute path without "." or ".."
// segments, no NUL, at most 4096 bytes.
result<std::string> file_url_path(std::string_view s);

// True when s starts with "file:" (any case): a local file, not a URL to fetch.
bool is_file_url(std::string_view s);

} // namespace klingd::core
