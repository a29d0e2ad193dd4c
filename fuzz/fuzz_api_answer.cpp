// Fuzz target: everything that reads what the Segmind API (or whoever answers
// in its place) sends back: core/api_answer.hpp (classify, error_detail,
// parse_submit, parse_status, output_urls, rate_limit_until, media_extension)
// and core/url.hpp (http_url, may_carry_api_key). Server data is hostile:
// nothing may crash, and what comes out must be bounded and well formed. Above
// all, a status or result URL taken from a submit answer must be one the API key
// may be sent to.
//
// Input: byte 0 picks the function (its value mod 8: '0'..'7' in the seeds),
// bytes 1-3 are the HTTP status as decimal digits ((byte - '0') mod 10 each),
// byte 4 is ignored (a newline in the seeds), and the rest is split at '\n' into
// the function's fields; the last field takes the remainder, newlines included.
//   0 error:      BODY                             classify, error_detail
//   1 submit:     BASE_URL \n BODY                 parse_submit
//   2 status:     BODY                             parse_status
//   3 result:     CONTENT_TYPE \n BODY             output_urls, media_extension, http_url
//   4 rate limit: RETRY_AFTER \n RESET_AT \n NOW   rate_limit_until (NOW: epoch ms, optional)
//   5 media:      URL \n CONTENT_TYPE              media_extension
//   6 urls:       URL \n BASE_URL                  http_url::parse, may_carry_api_key
//   7 all:        BODY                             every body reader, base https://api.segmind.com
//
// Finding fixed, now seeds (fuzz/corpus/fuzz_api_answer/finding-*): parse_url took
// '[', ']' and ':' in a host outside an IPv6 literal ("https://x[::1]:9443/"), and
// origin() of such a URL did not parse back. Every parsed host must now be plausible.
#include "core/api_answer.hpp"
#include "core/url.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace {

using namespace klingd::core;

// A host as RFC 3986 has it: a registered name, an IPv4 address, or (bracketed in
// the URL, which host() strips) an IPv6 address.
bool plausible_host(const std::string& h) {
    auto name_char = [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               std::string_view("-._~%!$&'()*+,;=").find(c) != std::string_view::npos;
    };
    auto v6_char = [](char c) {
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') ||
               c == ':' || c == '.';
    };
    return std::all_of(h.begin(), h.end(), name_char) || std::all_of(h.begin(), h.end(), v6_char);
}

[[noreturn]] void violated(const char* what, std::string_view detail = {}) {
    std::fprintf(stderr, "fuzz_api_answer: invariant violated: %s\n%.*s\n", what,
                 static_cast<int>(detail.size()), detail.data());
    __builtin_trap();
}

void check(bool ok, const char* what, std::string_view detail = {}) {
    if (!ok)
        violated(what, detail);
}

// Splits s at '\n' into n fields; the last one takes the rest. Missing fields are empty.
std::vector<std::string_view> fields(std::string_view s, std::size_t n) {
    std::vector<std::string_view> out;
    while (out.size() + 1 < n) {
        auto nl = s.find('\n');
        if (nl == std::string_view::npos)
            break;
        out.push_back(s.substr(0, nl));
        s.remove_prefix(nl + 1);
    }
    out.push_back(s);
    out.resize(n);
    return out;
}

bool http_url_text(std::string_view s) {
    std::string head(s.substr(0, 8));
    for (auto& c : head)
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return (head.starts_with("https://") || head.starts_with("http://")) && s.size() <= 8192 &&
           std::none_of(s.begin(), s.end(), [](unsigned char c) { return c <= 0x20 || c == 0x7f; });
}

void check_classify(int status) {
    answer_class c = classify(status);
    check((c == answer_class::ok) == (status >= 200 && status < 300), "2xx, and only 2xx, is ok");
    check((c == answer_class::server_error) == (status >= 500 && status < 600),
          "5xx, and only 5xx, is a server error");
    if (status == 429)
        check(c == answer_class::rate_limited, "429 is rate limited");
}

void check_error_detail(int status, std::string_view body) {
    std::string d = error_detail(status, body);
    std::string prefix = "HTTP " + std::to_string(status) + ": ";
    check(d.starts_with(prefix) && d.size() > prefix.size(), "error_detail is HTTP N: detail", d);
    check(d.size() <= prefix.size() + 500, "error_detail is at most 500 bytes of detail", d);
    check(std::none_of(d.begin(), d.end(), [](unsigned char c) { return c < 0x20; }),
          "error_detail has no control characters", d);
}

void check_url(const http_url& u, std::string_view from) {
    auto host = u.host();
    auto target = u.target();
    check(!host.empty(), "a parsed URL has a host", from);
    check(u.port() != 0, "a parsed URL has a port", from);
    check(target.starts_with("/"), "the target starts with /", from);
    check(target.find('#') == std::string::npos, "the target has no fragment", from);
    check(std::none_of(host.begin(), host.end(), [](char c) { return c >= 'A' && c <= 'Z'; }),
          "the host is lower case", from);
    check(plausible_host(host), "the host is a name, an IPv4 or an IPv6 address", from);
    // Serialized again (the connection pool's key and the request line), it parses the same.
    std::string text = u.origin() + target;
    auto again = http_url::parse(text);
    check(again.has_value(), "origin() + target parses again", text);
    check(again->tls() == u.tls() && again->host() == host && again->port() == u.port() &&
              again->target() == target,
          "origin() + target parses to the same URL", text);
    check(may_carry_api_key(u, u), "a URL may carry the key to its own origin", from);
}

void check_submit(std::string_view body, std::string_view base_url) {
    auto f = parse_submit(body, base_url);
    if (!f)
        return;
    check(!f->request_id.empty() && f->request_id.size() <= 128, "the request id is 1-128 bytes");
    check(std::all_of(f->request_id.begin(), f->request_id.end(),
                      [](char c) {
                          return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                                 (c >= '0' && c <= '9') || c == '-' || c == '_';
                      }),
          "the request id is safe in a path", f->request_id);
    auto base = http_url::parse(base_url);
    if (!base)
        return; // the configuration only accepts base URLs that parse
    for (const std::string* s : {&f->status_url, &f->response_url}) {
        auto u = http_url::parse(*s);
        check(u.has_value(), "a status or response URL parses", *s);
        check_url(*u, *s);
        check(may_carry_api_key(*u, *base), "the API key may go to the status and response URLs",
              *s);
    }
}

void check_status(std::string_view body) {
    auto s = parse_status(body);
    check(s == remote_status::unknown || !to_string(s).empty(),
          "parse_status gives a known state or nothing", std::string(to_string(s)));
}

std::string check_media_extension(std::string_view u, std::string_view content_type) {
    static constexpr std::string_view known[] = {"png",  "jpg", "webp", "gif", "mp4",
                                                 "webm", "mov", "mp3",  "wav", "bin"};
    std::string e = media_extension(u, content_type);
    check(std::find(std::begin(known), std::end(known), e) != std::end(known),
          "media_extension gives a known extension or bin", e);
    return e;
}

void check_outputs(std::string_view body, std::string_view content_type) {
    auto urls = output_urls(body);
    check(urls.size() <= 64, "at most 64 output URLs");
    for (std::size_t i = 0; i < urls.size(); ++i) {
        check(http_url_text(urls[i]), "an output URL is an http(s) URL without spaces", urls[i]);
        for (std::size_t j = 0; j < i; ++j)
            check(urls[i] != urls[j], "output URLs are unique", urls[i]);
        if (auto u = http_url::parse(urls[i]))
            check_url(*u, urls[i]);
        check_media_extension(urls[i], content_type);
    }
}

void check_rate_limit(std::string_view retry_after, std::string_view reset_at,
                      std::string_view now_text) {
    // now: epoch milliseconds from the input, kept to 1970..2100; else a fixed 2026 instant.
    std::int64_t now_ms = 1795000000000;
    if (!now_text.empty() && now_text.size() <= 13 &&
        std::all_of(now_text.begin(), now_text.end(), [](char c) { return c >= '0' && c <= '9'; }))
        now_ms = std::min<std::int64_t>(std::stoll(std::string(now_text)), 4102444800000);
    time_point now{milliseconds(now_ms)};
    auto t = rate_limit_until(retry_after, reset_at, now);
    if (t)
        check(*t >= now && *t <= now + std::chrono::hours(1),
              "a 429 wait ends between now and an hour from now");
    if (retry_after.empty() && reset_at.empty())
        check(!t, "no header, no time");
}

void check_urls(std::string_view a, std::string_view b) {
    auto u = http_url::parse(a);
    auto base = http_url::parse(b);
    if (u)
        check_url(*u, a);
    if (base)
        check_url(*base, b);
    if (u && base) {
        bool to = may_carry_api_key(*u, *base);
        if (to && !u->tls())
            check(u->origin() == base->origin(), "plain http gets the key only at the base origin",
                  a);
        if (u->origin() == base->origin())
            check(to, "the base origin gets the key", a);
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 5 || size > (1u << 20))
        return 0;
    int op = data[0] % 8;
    int status = 0;
    for (int i = 1; i <= 3; ++i)
        status = status * 10 + static_cast<std::uint8_t>(data[i] - '0') % 10;
    std::string_view rest(reinterpret_cast<const char*>(data) + 5, size - 5);
    check_classify(status);
    switch (op) {
    case 0: {
        check_error_detail(status, rest);
        break;
    }
    case 1: {
        auto f = fields(rest, 2);
        check_submit(f[1], f[0]);
        break;
    }
    case 2:
        check_status(rest);
        break;
    case 3: {
        auto f = fields(rest, 2);
        check_outputs(f[1], f[0]);
        break;
    }
    case 4: {
        auto f = fields(rest, 3);
        check_rate_limit(f[0], f[1], f[2]);
        break;
    }
    case 5: {
        auto f = fields(rest, 2);
        check_media_extension(f[0], f[1]);
        break;
    }
    case 6: {
        auto f = fields(rest, 2);
        check_urls(f[0], f[1]);
        break;
    }
    default:
        check_error_detail(status, rest);
        check_submit(rest, "https://api.segmind.com");
        check_status(rest);
        check_outputs(rest, "");
        break;
    }
    return 0;
}
