// http_url over Boost.URL, and the key-scope rule.
#include "core/url.hpp"

#include <algorithm>
#include <boost/url/encode.hpp>
#include <boost/url/ipv4_address.hpp>
#include <boost/url/ipv6_address.hpp>
#include <boost/url/parse.hpp>
#include <boost/url/rfc/pchars.hpp>
#include <boost/url/rfc/reserved_chars.hpp>
#include <charconv>
#include <fmt/format.h>

namespace klingd::core {

namespace urls = boost::urls;

namespace {

bool name_char(char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '~' ||
           c == '-';
}

// Percent-encodes the bytes a URI may not hold as they are (not reserved, not
// unreserved, not '%'), as browsers do, so that such a link still names its file.
// Brackets are left as they are only in the authority (an IPv6 address), and a '%' only
// where it starts an escape ("50%.png" names the file "50%.png").
std::string encode_stray_bytes(std::string_view s) {
    constexpr auto allowed = urls::unreserved_chars + urls::grammar::lut_chars(":/?#@!$&'()*+,;=");
    auto hex = [](char c) {
        return std::isxdigit(static_cast<unsigned char>(c)) != 0;
    };
    auto authority_end = s.find_first_of("/?#", s.find("//") + 2);
    std::string out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size(); ++i) {
        char c = s[i];
        bool keep = allowed(c) ||
                    (c == '%' && i + 2 < s.size() && hex(s[i + 1]) && hex(s[i + 2])) ||
                    ((c == '[' || c == ']') && i < authority_end);
        if (keep)
            out += c;
        else
            out += fmt::format("%{:02X}", static_cast<unsigned char>(c));
    }
    return out;
}

// parse_uri, less a bug of Boost.URL 1.81: it reads "http://127.0.0.1.evil.example:81/"
// as the IPv4 host 127.0.0.1 and the path ".evil.example:81/", though a path after an
// authority starts with '/'. Such a host is a name: parse it with a letter before it,
// which no IPv4 address has, and set the name afterwards.
boost::system::result<urls::url> parse_absolute(const std::string& text) {
    auto parsed = urls::parse_uri(text);
    if (!parsed)
        return parsed.error();
    auto path = parsed->encoded_path();
    if (path.empty() || path.starts_with('/'))
        return urls::url(*parsed);
    auto at = text.find("//");
    if (parsed->host_type() != urls::host_type::ipv4 || at == std::string::npos)
        return boost::system::error_code(EINVAL, boost::system::generic_category());
    std::string with_letter = text.substr(0, at + 2) + "x" + text.substr(at + 2);
    auto patched = urls::parse_uri(with_letter); // a view of with_letter
    if (!patched || patched->host_type() != urls::host_type::name)
        return boost::system::error_code(EINVAL, boost::system::generic_category());
    // The same bug once more ("http://1.2.3.4.nip.io:80evil/x"): the path must start with '/'.
    if (auto p = patched->encoded_path(); !p.empty() && !p.starts_with('/'))
        return boost::system::error_code(EINVAL, boost::system::generic_category());
    urls::url u(*patched);
    std::string name(u.encoded_host().substr(1)); // a copy: the setter rewrites the buffer
    u.set_encoded_host_name(name);
    return u;
}

} // namespace

result<http_url> http_url::parse(std::string_view s) {
    auto lower_prefix = [&](std::string_view p) {
        return s.size() >= p.size() &&
               std::equal(p.begin(), p.end(), s.begin(), [](char a, char b) {
                   return a == std::tolower(static_cast<unsigned char>(b));
               });
    };
    if (!lower_prefix("https://") && !lower_prefix("http://"))
        return error(errc::url_not_http);
    if (s.size() > 8192)
        return error(errc::url_too_long);
    if (std::any_of(s.begin(), s.end(), [](unsigned char c) { return c <= 0x20 || c == 0x7f; }))
        return error(errc::url_bad_character);
    std::string text = encode_stray_bytes(s);
    auto parsed = parse_absolute(text);
    if (!parsed) {
        auto authority = text.substr(text.find("//") + 2);
        authority = authority.substr(0, authority.find_first_of("/?#"));
        bool brackets = authority.find_first_of("[]") != std::string::npos;
        return error(brackets ? errc::url_bad_host : errc::url_malformed);
    }
    http_url out;
    out.url_ = std::move(*parsed);
    auto& u = out.url_;
    u.normalize_scheme();
    if (u.scheme_id() != urls::scheme::https && u.scheme_id() != urls::scheme::http)
        return error(errc::url_not_http);
    if (u.has_userinfo())
        return error(errc::url_has_userinfo);
    switch (u.host_type()) {
    case urls::host_type::ipv4:
    case urls::host_type::ipv6:
        break;
    case urls::host_type::name: {
        std::string_view host = u.encoded_host();
        if (host.empty())
            return error(errc::url_no_host);
        if (!std::all_of(host.begin(), host.end(), name_char))
            return error(errc::url_bad_host);
        break;
    }
    default:
        return error(errc::url_bad_host);
    }
    u.normalize_authority(); // lower-case host
    out.port_ = u.scheme_id() == urls::scheme::https ? 443 : 80;
    if (u.has_port() && !u.port().empty()) { // "host:" is the default port (RFC 3986)
        auto p = u.port();
        unsigned n = 0;
        auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), n);
        if (p.empty() || ec != std::errc() || end != p.data() + p.size() || n == 0 || n > 65535)
            return error(errc::url_bad_port);
        out.port_ = static_cast<std::uint16_t>(n);
    }
    u.remove_fragment();
    return out;
}

std::string http_url::host() const {
    return std::string(url_.encoded_host_address());
}

std::string http_url::target() const {
    std::string t(url_.encoded_path());
    if (t.empty())
        t = "/";
    if (url_.has_query())
        t += "?" + std::string(url_.encoded_query());
    return t;
}

std::string http_url::origin() const {
    return fmt::format("{}://{}", url_.scheme(), host_header());
}

std::string http_url::host_header() const {
    std::string h(url_.encoded_host()); // an IPv6 address keeps its brackets
    bool default_port = (tls() && port_ == 443) || (!tls() && port_ == 80);
    return default_port ? h : fmt::format("{}:{}", h, port_);
}

http_url http_url::with_target(std::string_view path) const {
    http_url out = *this;
    out.url_.remove_query();
    out.url_.set_encoded_path(path);
    return out;
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

bool may_carry_api_key(const http_url& u, const http_url& base) {
    auto host = u.host(), base_host = base.host();
    if (u.tls() == base.tls() && host == base_host && u.port() == base.port())
        return true;
    if (!u.tls())
        return false;
    std::string parent = parent_domain(base_host);
    if (parent.empty() || parent.find('.') == std::string::npos)
        return false;
    // Without the public suffix list, "co.uk" and "segmind.com" look alike: a
    // two-letter top-level domain under a label of up to three letters counts as a public suffix.
    auto dot = parent.rfind('.');
    if (parent.find('.') == dot && parent.size() - dot - 1 <= 2 && dot <= 3)
        return false;
    return host == parent || (host.size() > parent.size() + 1 && host.ends_with("." + parent));
}

bool is_loopback_host(std::string_view host) {
    if (host == "localhost")
        return true;
    if (auto v4 = boost::urls::parse_ipv4_address(host))
        return v4->is_loopback(); // 127.0.0.0/8
    auto v6 = boost::urls::parse_ipv6_address(host);
    return v6 && v6->is_loopback();
}

result<http_url> redirect_target(const http_url& from, std::string_view location) {
    auto ref = boost::urls::parse_uri_reference(location);
    if (!ref)
        return error(errc::url_malformed, fmt::format("the redirect's Location \"{}\" is not a URL",
                                                      location.substr(0, 200)));
    boost::urls::url resolved;
    if (auto r = boost::urls::resolve(from.get(), *ref, resolved); !r)
        return error(errc::url_malformed, fmt::format("the redirect's Location \"{}\" cannot be "
                                                      "resolved against {}",
                                                      location.substr(0, 200), from.text()));
    auto u = http_url::parse(resolved.buffer());
    if (!u)
        return error(u.error().code,
                     fmt::format("redirect to {}: {}", resolved.buffer().substr(0, 200),
                                 u.error().message()));
    // Never down to plain http from https, nor from elsewhere to a local service.
    if (!u->tls() && (from.tls() || !is_loopback_host(from.host()) || !is_loopback_host(u->host())))
        return error(errc::url_not_http,
                     fmt::format("redirect to {} refused: only https:// is followed (http:// "
                                 "only from a loopback host to a loopback host)",
                                 u->text().substr(0, 200)));
    return u;
}

} // namespace klingd::core

namespace klingd::core {

bool is_file_url(std::string_view s) {
    return s.size() >= 5 && std::equal(s.begin(), s.begin() + 5,
                                       "file:", [](char a, char b) { return (a | 0x20) == b; });
}

result<std::string> file_url_path(std::string_view s) {
    auto bad = [](std::string why) {
        return result<std::string>(error(errc::url_malformed, std::move(why)));
    };
    if (s.size() > 8192)
        return bad("is longer than 8192 characters");
    auto u = boost::urls::parse_uri(s);
    if (!u)
        return bad("is not a file:// URL with an absolute path (file:///folder/name.png)");
    if (u->scheme_id() != boost::urls::scheme::file)
        return bad("is not a file:// URL");
    if (!u->has_authority())
        return bad("must be file:// and an absolute path (file:///folder/name.png)");
    if (u->has_userinfo() || u->has_port() || u->has_query() || u->has_fragment())
        return bad("must be file:// and a path only: no user, port, query or fragment");
    auto host = u->encoded_host();
    if (!host.empty() && host != "localhost")
        return bad("names another host: only local files (file:///path) are taken");
    std::string path = u->path();
    if (path.empty() || path.front() != '/')
        return bad("must name an absolute path");
    if (path.size() > 4096)
        return bad("names a path longer than 4096 bytes");
    if (path.find('\0') != std::string::npos)
        return bad("holds a NUL byte");
    for (auto seg : u->segments()) {
        if (seg == "." || seg == ".." || seg.empty())
            return bad("must not hold \".\", \"..\" or empty path segments");
        if (seg.find('/') != std::string::npos) // %2F: a slash no segment check would see
            return bad("must not hold an encoded slash (%2F)");
    }
    return path;
}

} // namespace klingd::core
