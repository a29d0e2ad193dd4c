// Parsing of Segmind answers. Everything here treats server data as hostile:
// bounded sizes, checked types, no exceptions escape.
#include "core/api_answer.hpp"

#include "core/time_text.hpp"
#include "core/url.hpp"
#include "core/utf8.hpp"

#include <algorithm>
#include <boost/json.hpp>
#include <cctype>
#include <ctime>
#include <fmt/format.h>

namespace klingd::core {
namespace json = boost::json;

namespace {

// sp: where the value's memory comes from (default: the heap).
std::optional<json::value> parse_json(std::string_view body, json::storage_ptr sp = {}) {
    boost::system::error_code ec;
    json::parse_options opts;
    opts.max_depth = 64;
    json::value v = json::parse(body, ec, std::move(sp), opts);
    if (ec)
        return std::nullopt;
    return v;
}

std::string string_field(const json::object& o, std::string_view key) {
    auto it = o.find(key);
    if (it == o.end() || !it->value().is_string())
        return {};
    return std::string(it->value().as_string());
}

// What looks like a link to a file (http(s), no spaces): collected even when http_url
// would refuse it, so that the download fails loudly with the reason instead of the
// job completing without the file.
bool looks_like_http_url(std::string_view s) {
    std::string head(s.substr(0, 8));
    std::transform(head.begin(), head.end(), head.begin(),
                   [](unsigned char c) { return std::tolower(c); });
    if (!(head.starts_with("https://") || head.starts_with("http://")) || s.size() > 8192)
        return false;
    return std::none_of(s.begin(), s.end(), [](unsigned char c) { return c <= 0x20 || c == 0x7f; });
}

bool is_safe_request_id(std::string_view id) {
    if (id.empty() || id.size() > 128)
        return false;
    return std::all_of(id.begin(), id.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_';
    });
}

void collect_urls(const json::value& v, std::vector<std::string>& out, int depth) {
    if (depth > 4 || out.size() >= 64)
        return;
    if (v.is_string()) {
        if (looks_like_http_url(v.as_string()))
            out.emplace_back(v.as_string());
    } else if (v.is_array()) {
        for (auto& e : v.as_array())
            collect_urls(e, out, depth + 1);
    } else if (v.is_object()) {
        const auto& o = v.as_object();
        for (auto key : {"url", "uri", "image", "video", "images", "videos"})
            if (auto it = o.find(key); it != o.end())
                collect_urls(it->value(), out, depth + 1);
    }
}

bool all_digits(std::string_view s) {
    return !s.empty() &&
           std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front())))
        s.remove_prefix(1);
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back())))
        s.remove_suffix(1);
    return s;
}

// "2026-11-22T10:15:30Z", "2026-11-22T10:15:30.123Z", "+00:00" instead of Z, or epoch seconds.
std::optional<time_point> parse_reset_at(std::string_view s) {
    s = trim(s);
    if (s.empty())
        return std::nullopt;
    if (all_digits(s) ||
        (s.find('.') != std::string_view::npos && s.find('-') == std::string_view::npos &&
         s.find(':') == std::string_view::npos)) {
        char* end = nullptr;
        std::string tmp(s);
        double secs = std::strtod(tmp.c_str(), &end);
        if (end != tmp.c_str() + tmp.size() || !(secs > 0) || secs > 1e11)
            return std::nullopt;
        return time_point(milliseconds(static_cast<std::int64_t>(secs * 1000)));
    }
    auto t = parse_rfc3339(s, zone_rule::utc_if_missing);
    if (!t || t->time_since_epoch().count() <= 0)
        return std::nullopt;
    return time_point(*t);
}

// Retry-After: delay-seconds or an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT").
std::optional<time_point> parse_retry_after(std::string_view s, time_point now) {
    s = trim(s);
    if (s.empty())
        return std::nullopt;
    if (all_digits(s)) {
        if (s.size() > 7)
            return std::nullopt;
        return now + std::chrono::seconds(std::stol(std::string(s)));
    }
    if (auto t = parse_http_date(s))
        return time_point(*t);
    return std::nullopt;
}

} // namespace

answer_class classify(int s) {
    if (s >= 200 && s < 300)
        return answer_class::ok;
    switch (s) {
    case 400:
        return answer_class::bad_request;
    case 401:
        return answer_class::unauthorized;
    case 403:
        return answer_class::forbidden;
    case 404:
        return answer_class::not_found;
    case 406:
        return answer_class::no_credits;
    case 410:
        return answer_class::gone;
    case 422:
        return answer_class::failed;
    case 429:
        return answer_class::rate_limited;
    default:
        break;
    }
    if (s >= 500 && s < 600)
        return answer_class::server_error;
    return answer_class::other;
}

std::string error_detail(int http_status, std::string_view body) {
    std::string detail;
    if (auto v = parse_json(body); v && v->is_object()) {
        const auto& o = v->as_object();
        for (auto key : {"error", "detail", "message"}) {
            if (auto it = o.find(key); it != o.end()) {
                detail = it->value().is_string() ? std::string(it->value().as_string())
                                                 : json::serialize(it->value());
                break;
            }
        }
    }
    if (detail.empty())
        detail = std::string(trim(body.substr(0, 300)));
    // Server text: no control characters, and valid UTF-8 (it goes into JSON answers).
    std::string repaired = valid_utf8(detail);
    std::string clean;
    for (char c : utf8_prefix(repaired, 500))
        clean += (static_cast<unsigned char>(c) < 0x20) ? ' ' : c;
    if (clean.empty())
        clean = "(no detail)";
    return fmt::format("HTTP {}: {}", http_status, clean);
}

std::optional<submit_fields> parse_submit(std::string_view body, std::string_view base_url) {
    auto v = parse_json(body);
    if (!v || !v->is_object())
        return std::nullopt;
    const auto& o = v->as_object();
    submit_fields f;
    f.request_id = string_field(o, "request_id");
    if (!is_safe_request_id(f.request_id))
        return std::nullopt;
    // Follow the URLs as given (as the SDK does) only where the API key may go;
    // otherwise build them from the configured base.
    auto base = http_url::parse(base_url);
    auto trusted = [&](const std::string& s) {
        auto u = http_url::parse(s);
        return u && base && may_carry_api_key(*u, *base);
    };
    f.status_url = string_field(o, "status_url");
    if (!trusted(f.status_url))
        f.status_url = fmt::format("{}/v2/requests/{}/status", base_url, f.request_id);
    f.response_url = string_field(o, "response_url");
    if (!trusted(f.response_url))
        f.response_url = fmt::format("{}/v2/requests/{}", base_url, f.request_id);
    return f;
}

std::optional<submit_fields> parse_cut_submit(std::string_view partial, std::string_view base_url) {
    // A scan of the JSON text as far as it goes: the first member of the top-level
    // object named "request_id" whose string value is whole. Anything that is not the
    // start of a JSON object (a proxy's page) gives nothing.
    std::size_t i = 0;
    auto skip_space = [&] {
        while (i < partial.size() && (partial[i] == ' ' || partial[i] == '\t' ||
                                      partial[i] == '\n' || partial[i] == '\r'))
            ++i;
    };
    // The string starting at partial[i] == '"', escapes kept as written; nullopt if cut.
    auto read_string = [&]() -> std::optional<std::string_view> {
        std::size_t start = ++i;
        for (; i < partial.size(); ++i) {
            if (partial[i] == '\\')
                ++i;
            else if (partial[i] == '"')
                return partial.substr(start, i++ - start);
        }
        return std::nullopt;
    };
    skip_space();
    if (i >= partial.size() || partial[i] != '{')
        return std::nullopt;
    int depth = 0;
    bool expect_key = false;
    while (i < partial.size()) {
        char ch = partial[i];
        if (ch == '"') {
            bool key = depth == 1 && expect_key;
            auto text = read_string();
            if (!text)
                return std::nullopt;
            skip_space();
            if (key && *text == "request_id" && i < partial.size() && partial[i] == ':') {
                ++i;
                skip_space();
                if (i >= partial.size() || partial[i] != '"')
                    return std::nullopt;
                auto id = read_string();
                if (!id)
                    return std::nullopt; // the id itself was cut
                submit_fields f;
                f.request_id = std::string(*id);
                if (!is_safe_request_id(f.request_id))
                    return std::nullopt;
                f.status_url = fmt::format("{}/v2/requests/{}/status", base_url, f.request_id);
                f.response_url = fmt::format("{}/v2/requests/{}", base_url, f.request_id);
                return f;
            }
            expect_key = false;
            continue;
        }
        if (ch == '{' || ch == '[') {
            ++depth;
            expect_key = ch == '{' && depth == 1;
        } else if (ch == '}' || ch == ']') {
            --depth;
            expect_key = false;
        } else if (ch == ',') {
            expect_key = depth == 1;
        } else if (ch != ' ' && ch != '\t' && ch != '\n' && ch != '\r') {
            expect_key = false; // a value's character
        }
        ++i;
    }
    return std::nullopt;
}

std::string_view to_string(request_kind k) {
    switch (k) {
    case request_kind::submit:
        return "submit";
    case request_kind::status:
        return "status";
    case request_kind::upload:
        return "upload";
    case request_kind::result:
        break;
    }
    return "result";
}

std::string_view to_string(remote_status s) {
    switch (s) {
    case remote_status::queued:
        return "QUEUED";
    case remote_status::processing:
        return "PROCESSING";
    case remote_status::completed:
        return "COMPLETED";
    case remote_status::failed:
        return "FAILED";
    case remote_status::unknown:
        break;
    }
    return "";
}

remote_status parse_status(std::string_view body) {
    // Polls are the hot path: a status answer is small, so parse it into a stack buffer.
    unsigned char buf[4096];
    json::monotonic_resource mr(buf, sizeof buf);
    auto v = parse_json(body, &mr);
    if (!v || !v->is_object())
        return remote_status::unknown;
    std::string s = string_field(v->as_object(), "status");
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::toupper(c); });
    static constexpr std::pair<std::string_view, remote_status> names[] = {
        {"QUEUED", remote_status::queued},          {"PROCESSING", remote_status::processing},
        {"IN_PROGRESS", remote_status::processing}, {"RUNNING", remote_status::processing},
        {"COMPLETED", remote_status::completed},    {"SUCCEEDED", remote_status::completed},
        {"SUCCESS", remote_status::completed},      {"FAILED", remote_status::failed},
    };
    for (auto [name, status] : names)
        if (s == name)
            return status;
    return remote_status::unknown;
}

std::vector<std::string> output_urls(std::string_view body) {
    std::vector<std::string> out;
    auto v = parse_json(body);
    if (!v || !v->is_object())
        return out;
    const auto& o = v->as_object();
    for (auto key : {"output", "images", "video", "outputs"})
        if (auto it = o.find(key); it != o.end())
            collect_urls(it->value(), out, 0);
    // the same URL twice is one file
    std::vector<std::string> unique;
    for (auto& u : out)
        if (std::find(unique.begin(), unique.end(), u) == unique.end())
            unique.push_back(std::move(u));
    return unique;
}

std::optional<time_point> rate_limit_until(std::string_view retry_after, std::string_view reset_at,
                                           time_point now) {
    auto a = parse_retry_after(retry_after, now);
    auto b = parse_reset_at(reset_at);
    std::optional<time_point> until;
    for (auto t : {a, b})
        if (t && (!until || *t > *until))
            until = t;
    if (!until)
        return std::nullopt;
    if (*until > now + std::chrono::hours(1))
        return std::nullopt; // absurd: fall back to backoff
    return std::max(*until, now);
}

std::string media_extension(std::string_view url, std::string_view content_type) {
    static constexpr std::string_view known[] = {"png", "jpg",  "jpeg", "webp", "gif",
                                                 "mp4", "webm", "mov",  "mp3",  "wav"};
    auto path = url.substr(0, url.find_first_of("?#"));
    auto slash = path.rfind('/');
    auto name = slash == std::string_view::npos ? path : path.substr(slash + 1);
    if (auto dot = name.rfind('.'); dot != std::string_view::npos) {
        std::string ext(name.substr(dot + 1));
        std::transform(ext.begin(), ext.end(), ext.begin(),
                       [](unsigned char c) { return std::tolower(c); });
        if (std::find(std::begin(known), std::end(known), ext) != std::end(known))
            return ext == "jpeg" ? "jpg" : ext;
    }
    static constexpr std::pair<std::string_view, std::string_view> types[] = {
        {"image/png", "png"},       {"image/jpeg", "jpg"}, {"image/webp", "webp"},
        {"image/gif", "gif"},       {"video/mp4", "mp4"},  {"video/webm", "webm"},
        {"video/quicktime", "mov"}, {"audio/mpeg", "mp3"}, {"audio/wav", "wav"},
    };
    auto ct = trim(content_type.substr(0, content_type.find(';')));
    for (auto [t, e] : types)
        if (ct.size() == t.size() &&
            std::equal(ct.begin(), ct.end(), t.begin(),
                       [](char a, char b) { return std::tolower(a) == b; }))
            return std::string(e);
    return "bin";
}

} // namespace klingd::core
