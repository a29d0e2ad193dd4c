// Routing and HTTP framing for segmind-sim. The service decides everything
// about the answer; this file only maps paths and headers to its calls.
#include "sim/handler.hpp"

#include <boost/beast/http/field.hpp>
#include <boost/beast/http/verb.hpp>
#include <charconv>
#include <string_view>

namespace klingd::sim {
namespace http = boost::beast::http;

namespace {

struct target_parts {
    std::string_view path;
    std::string_view query;
};

target_parts split_target(std::string_view target) {
    auto q = target.find('?');
    if (q == std::string_view::npos)
        return {target, {}};
    return {target.substr(0, q), target.substr(q + 1)};
}

// The hop=N of a media URL's query (the redirects followed so far); 0 without one.
int hop_of(std::string_view query) {
    while (!query.empty()) {
        auto amp = query.find('&');
        auto pair = query.substr(0, amp);
        if (pair.starts_with("hop=")) {
            int n = 0;
            auto v = pair.substr(4);
            auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
            return ec == std::errc() && p == v.data() + v.size() && n >= 0 ? n : 0;
        }
        if (amp == std::string_view::npos)
            break;
        query.remove_prefix(amp + 1);
    }
    return 0;
}

bool query_has(std::string_view query, std::string_view pair) {
    while (!query.empty()) {
        auto amp = query.find('&');
        if (query.substr(0, amp) == pair)
            return true;
        if (amp == std::string_view::npos)
            break;
        query.remove_prefix(amp + 1);
    }
    return false;
}

std::string_view header(const http_request& req, std::string_view name) {
    auto it = req.find(name);
    return it == req.end() ? std::string_view() : std::string_view(it->value());
}

http_response make_response(const http_request& req, unsigned status, std::string body,
                            std::string_view content_type) {
    http_response res{static_cast<http::status>(status), req.version()};
    res.set(http::field::server, "segmind-sim");
    res.set(http::field::content_type, content_type);
    res.keep_alive(req.keep_alive());
    res.body().text = std::move(body);
    res.prepare_payload();
    return res;
}

http_response from_answer(const http_request& req, api_answer a) {
    auto res = make_response(req, a.status, std::move(a.body), a.content_type);
    for (auto& [name, value] : a.headers)
        res.set(name, value);
    return res;
}

const std::string not_found_body = R"({"error":"Not found"})";

reply control(const http_request& req, std::string_view path, std::string_view query, service& svc,
              time_point now) {
    reply r;
    r.control = true;
    auto get = req.method() == http::verb::get;
    if (get && path == "/sim/health")
        r.response = make_response(req, 200, R"({"status":"ok"})", "application/json");
    else if (get && path == "/sim/stats")
        r.response = make_response(req, 200, svc.stats_json(!query_has(query, "requests=0"), now),
                                   "application/json");
    else if (get && path == "/sim/config")
        r.response = make_response(req, 200, svc.config_json(), "application/json");
    else if (req.method() == http::verb::post && path == "/sim/config")
        r.response = from_answer(req, svc.configure(req.body()));
    else
        r.response = make_response(req, 404, not_found_body, "application/json");
    return r;
}

// The API route of path: the endpoint, and the model or request id in it.
std::pair<endpoint, std::string_view> api_route(http::verb method, std::string_view path) {
    constexpr std::string_view requests = "/v2/requests/";
    if (method == http::verb::get && path.starts_with(requests)) {
        auto rest = path.substr(requests.size());
        auto slash = rest.find('/');
        if (slash == std::string_view::npos && !rest.empty())
            return {endpoint::result, rest};
        if (slash != std::string_view::npos && slash > 0 && rest.substr(slash) == "/status")
            return {endpoint::status, rest.substr(0, slash)};
        return {endpoint::other, {}};
    }
    auto model = path.substr(4);
    if (method == http::verb::post && !model.empty() && model.find('/') == std::string_view::npos)
        return {endpoint::submit, model};
    return {endpoint::other, {}};
}

} // namespace

reply handle_request(const http_request& req, service& svc, time_point now) {
    auto [path, query] = split_target(req.target());
    if (path.starts_with("/sim/"))
        return control(req, path, query, svc, now);

    bool api = path.starts_with("/v2/");
    bool media = req.method() == http::verb::get && path.starts_with("/media/");
    reply r;
    // A hosted upload: public, not an API call (no key, not counted against the budget).
    if (req.method() == http::verb::get && path.starts_with("/files/")) {
        r.kind = endpoint::files;
        if (auto* f = svc.hosted(path.substr(7)))
            r.response = make_response(req, 200, f->bytes, f->mime);
        else
            r.response = make_response(req, 404, not_found_body, "application/json");
        svc.count_answer(endpoint::files, r.response.result_int());
        return r;
    }
    bool upload = req.method() == http::verb::post && path == "/upload-asset";
    if (!api && !media && !upload) {
        r.response = make_response(req, 404, not_found_body, "application/json");
        svc.count_answer(endpoint::other, 404);
        return r;
    }

    auto [kind, name] = upload ? std::pair{endpoint::upload, std::string_view()}
                        : api  ? api_route(req.method(), path)
                               : std::pair{endpoint::media, path.substr(7)};
    r.kind = kind;
    delivery d = svc.draw_delivery(kind);
    if (d.reset_before) {
        r.reset = true;
        svc.count_answer(kind, 0);
        return r;
    }
    std::optional<time_point> seen_at;
    if (!d.reset_after && !d.truncate)
        seen_at = now + std::chrono::duration_cast<time_point::duration>(
                            std::chrono::duration<double>(d.delay_s));

    auto key = header(req, "x-api-key");
    if (kind == endpoint::submit) {
        r.response =
            from_answer(req, svc.submit(name, key, header(req, "content-type"), req.body(), now));
    } else if (kind == endpoint::upload) {
        r.response =
            from_answer(req, svc.upload(key, header(req, "content-type"), req.body(), now));
    } else if (kind == endpoint::status) {
        r.response = from_answer(req, svc.status(name, key, now, seen_at));
    } else if (kind == endpoint::result) {
        r.response = from_answer(req, svc.result(name, key, now, seen_at));
    } else if (kind == endpoint::media) {
        auto m = svc.get_media(name, key, header(req, "host"), hop_of(query), now);
        if (m.refused) {
            r.response =
                make_response(req, 403, R"({"error":"a media request must not carry x-api-key"})",
                              "application/json");
        } else if (!m.redirect_to.empty()) {
            r.response = make_response(req, 302, {}, "text/plain");
            r.response.set(boost::beast::http::field::location, m.redirect_to);
            r.response.prepare_payload();
        } else if (m.file) {
            r.response = make_response(req, 200, {}, content_type(m.file->kind));
            r.response.body().media = m.file;
            r.response.prepare_payload();
        } else {
            r.response = make_response(req, 404, not_found_body, "application/json");
        }
    } else {
        r.response = from_answer(req, svc.other_api_call(key, now));
    }

    if (d.reset_after) {
        r.reset = true;
        svc.count_answer(kind, 0);
        return r;
    }
    svc.count_answer(kind, r.response.result_int());
    r.truncate = d.truncate;
    r.trickle = d.trickle;
    r.delay_s = d.delay_s;
    if (r.truncate) {
        r.response.body().send_limit = payload_body::size(r.response.body()) / 2;
        r.response.keep_alive(false);
    }
    return r;
}

} // namespace klingd::sim
