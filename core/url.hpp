// Absolute http(s) URLs: parsed into origin and target, and the rule for which
// URLs may receive the API key.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace klingd::core {

struct url {
    std::string scheme; // "http" or "https"
    std::string host;   // without brackets for IPv6
    std::uint16_t port = 0;
    std::string target; // path and query, at least "/"

    bool tls() const { return scheme == "https"; }
    // "https://host:port", the key of a connection pool.
    std::string origin() const;
    // The Host header value.
    std::string host_header() const;
};

// nullopt when s is not an absolute http(s) URL with a host and a valid port.
std::optional<url> parse_url(std::string_view s);

// What is wrong with a URL's host as written between "//" and the port (an IPv6
// address in brackets), or nullopt: a name or IPv4 address of letters, digits and
// "._~-", or a bracketed IPv6 address of hex digits, ':' and '.'.
std::optional<std::string> host_problem(std::string_view host);

// True when u may be sent the API key: same origin as base, or an https URL on
// the same parent domain as base's host (api.segmind.com -> queue.segmind.com).
bool may_carry_api_key(const url& u, const url& base);

} // namespace klingd::core
