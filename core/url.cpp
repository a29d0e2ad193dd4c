// URL parsing for the HTTP client and the key-scope rule.
#include "core/url.hpp"

#include <algorithm>
#include <cctype>
#include <fmt/format.h>

namespace klingd::core {

std::string url::origin() const {
    return fmt::format("{}://{}", scheme, host_header());
}

std::string url::host_header() const {
    bool v6 = host.find(':') != std::string::npos;
    std::string h = v6 ? "[" + host + "]" : host;
    bool default_port = (scheme == "https" && port == 443) || (scheme == "http" && port == 80);
    return default_port ? h : fmt::format("{}:{}", h, port);
}

std::optional<std::string> host_problem(std::string_view host) {
    if (host.empty())
        return "the host is empty";
    if (host.front() == '[') {
        if (host.size() < 3 || host.back() != ']')
            return "an IPv6 address must be one bracketed address, such as [::1]";
        auto inside = host.substr(1, host.size() - 2);
        bool v6 = inside.find(':') != std::string_view::npos &&
                  std::all_of(inside.begin(), inside.end(), [](char c) {
                      return std::isxdigit(static_cast<unsigned char>(c)) || c == ':' || c == '.';
                  });
        if (!v6)
            return "the brackets hold something other than an IPv6 address";
        return std::nullopt;
    }
    bool name = std::all_of(host.begin(), host.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '~' ||
               c == '-';
    });
    if (!name)
        return "a host name may hold only letters, digits, '.', '_', '~' and '-'";
    return std::nullopt;
}

std::optional<url> parse_url(std::string_view s) {
    url u;
    if (s.starts_with("https://")) {
        u.scheme = "https";
        u.port = 443;
    } else if (s.starts_with("http://")) {
        u.scheme = "http";
        u.port = 80;
    } else {
        return std::nullopt;
    }
    if (s.size() > 8192 ||
        std::any_of(s.begin(), s.end(), [](unsigned char c) { return c <= 0x20 || c == 0x7f; }))
        return std::nullopt;
    auto rest = s.substr(u.scheme.size() + 3);
    auto end = rest.find_first_of("/?#");
    auto authority = rest.substr(0, end);
    u.target = end == std::string_view::npos ? "/" : std::string(rest.substr(end));
    if (auto hash = u.target.find('#'); hash != std::string::npos)
        u.target.resize(hash);
    if (u.target.empty() || u.target[0] == '?')
        u.target = "/" + u.target;
    if (authority.find('@') != std::string_view::npos)
        return std::nullopt; // no credentials in URLs
    std::string_view host = authority, port;
    if (authority.starts_with('[')) {
        auto close = authority.find(']');
        if (close == std::string_view::npos)
            return std::nullopt;
        host = authority.substr(0, close + 1);
        auto after = authority.substr(close + 1);
        if (!after.empty()) {
            if (after[0] != ':')
                return std::nullopt;
            port = after.substr(1);
        }
    } else if (auto colon = authority.rfind(':'); colon != std::string_view::npos) {
        host = authority.substr(0, colon);
        port = authority.substr(colon + 1);
    }
    if (host_problem(host))
        return std::nullopt;
    if (host.front() == '[')
        host = host.substr(1, host.size() - 2);
    if (!port.empty()) {
        if (port.size() > 5 ||
            !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; }))
            return std::nullopt;
        unsigned p = static_cast<unsigned>(std::stoul(std::string(port)));
        if (p == 0 || p > 65535)
            return std::nullopt;
        u.port = static_cast<std::uint16_t>(p);
    }
    u.host = std::string(host);
    std::transform(u.host.begin(), u.host.end(), u.host.begin(),
                   [](unsigned char c) { return std::tolower(c); });
    return u;
}

namespace {
bool is_ip_literal(const std::string& h) {
    return h.find(':') != std::string::npos || std::all_of(h.begin(), h.end(), [](char c) {
               return (c >= '0' && c <= '9') || c == '.';
           });
}
// The host without its first label ("api.segmind.com" -> "segmind.com"); "" for
// IP literals and hosts of fewer than three labels.
std::string parent_domain(const std::string& h) {
    if (is_ip_literal(h) || std::count(h.begin(), h.end(), '.') < 2)
        return {};
    return h.substr(h.find('.') + 1);
}
} // namespace

bool may_carry_api_key(const url& u, const url& base) {
    if (u.scheme == base.scheme && u.host == base.host && u.port == base.port)
        return true;
    if (!u.tls())
        return false;
    std::string parent = parent_domain(base.host);
    if (parent.empty() || parent.find('.') == std::string::npos)
        return false;
    // Without the public suffix list, "co.uk" and "segmind.com" look alike: a
    // two-letter top-level domain under a label of up to three letters counts as a public suffix.
    auto dot = parent.rfind('.');
    if (parent.find('.') == dot && parent.size() - dot - 1 <= 2 && dot <= 3)
        return false;
    return u.host == parent ||
           (u.host.size() > parent.size() + 1 && u.host.ends_with("." + parent));
}

} // namespace klingd::core
