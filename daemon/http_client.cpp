// Connection pool and exchanges over Beast. One exchange is: acquire a
// connection (reuse or resolve+connect+handshake), write, read with limits,
// return the connection to the pool when the server keeps it alive.
#include "daemon/http_client.hpp"

#include "core/download_pace.hpp"
#include "runtime/tls.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <cerrno>
#include <fmt/format.h>
#include <iterator>
#include <optional>

namespace klingd::daemon {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using boost::system::error_code;
using transport = core::http_outcome::transport;

struct http_client::connection {
    std::string origin;
    std::optional<beast::tcp_stream> plain;
    std::optional<beast::ssl_stream<beast::tcp_stream>> tls;
    beast::flat_buffer buffer;
    std::chrono::steady_clock::time_point last_used = std::chrono::steady_clock::now();
    bool reused = false;

    beast::tcp_stream& tcp() { return tls ? beast::get_lowest_layer(*tls) : *plain; }

    template <typename F>
    auto with_stream(F&& f) {
        if (tls)
            return f(*tls);
        return f(*plain);
    }
};

namespace {

// Errors of the file a download is written to, not of the network.
bool is_local_write_error(const boost::system::error_code& ec) {
    if (ec.category() != boost::system::system_category() &&
        ec.category() != boost::system::generic_category())
        return false;
    switch (ec.value()) {
    case ENOSPC:
    case EDQUOT:
    case EROFS:
    case EFBIG:
    case EIO:
        return true;
    default:
        return false;
    }
}

std::string describe(const error_code& ec) {
    if (ec == beast::error::timeout)
        return "timed out";
    return ec.message();
}

bool is_stale_connection_error(const error_code& ec) {
    return ec == http::error::end_of_stream || ec == asio::error::eof ||
           ec == asio::error::connection_reset || ec == asio::error::broken_pipe ||
           ec == asio::ssl::error::stream_truncated;
}

template <typename Body>
void copy_rate_headers(const http::response_parser<Body>& p, core::http_outcome& o) {
    const auto& h = p.get();
    o.status = static_cast<int>(h.result_int());
    if (auto it = h.find("retry-after"); it != h.end())
        o.retry_after = std::string(it->value());
    if (auto it = h.find("x-rate-limit-reset-at-utc"); it != h.end())
        o.reset_at = std::string(it->value());
}

} // namespace

http_client::http_client(asio::any_io_executor ex, asio::ssl::context& tls, client_options opts)
    : ex_(std::move(ex)), tls_(tls), opts_(opts) {}

http_client::~http_client() = default;

http_client::prepared::prepared() = default;
http_client::prepared::prepared(prepared&&) noexcept = default;
http_client::prepared& http_client::prepared::operator=(prepared&&) noexcept = default;
http_client::prepared::~prepared() = default;

bool http_client::fresh_enough(const connection& c, bool for_post,
                               std::chrono::steady_clock::time_point now, bool preparing) const {
    auto idle = now - c.last_used;
    // A POST prepared now is sent after its caller's commit: a pooled connection must
    // leave half the reuse time for that.
    auto post_limit = preparing ? opts_.post_reuse_idle / 2 : opts_.post_reuse_idle;
    return idle <= opts_.max_idle && (!for_post || idle <= post_limit);
}

void http_client::close_idle(std::chrono::steady_clock::time_point now) {
    for (auto it = idle_.begin(); it != idle_.end();) {
        auto& pool = it->second;
        std::erase_if(pool, [&](const auto& c) { return !fresh_enough(*c, false, now); });
        it = pool.empty() ? idle_.erase(it) : std::next(it);
    }
}

std::size_t http_client::idle_connections() const {
    std::size_t n = 0;
    for (auto& [origin, pool] : idle_)
        n += pool.size();
    return n;
}

asio::awaitable<http_client::prepared> http_client::prepare(const core::http_url& u,
                                                            bool for_post) {
    prepared p;
    p.c_ = co_await acquire(u, for_post, p.failure_, true);
    co_return p;
}

asio::awaitable<std::unique_ptr<http_client::connection>>
http_client::acquire(const core::http_url& u, bool for_post, core::http_outcome& failure,
                     bool preparing) {
    auto origin = u.origin();
    auto& pool = idle_[origin];
    while (!pool.empty()) {
        auto c = std::move(pool.back());
        pool.pop_back();
        if (!fresh_enough(*c, for_post, std::chrono::steady_clock::now(), preparing))
            continue; // closed by its destructor
        c->reused = true;
        co_return c;
    }

    auto c = std::make_unique<connection>();
    c->origin = origin;
    error_code ec;
    asio::ip::tcp::resolver resolver(ex_);
    auto endpoints = co_await resolver.async_resolve(u.host(), std::to_string(u.port()),
                                                     asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
        failure.how = transport::not_sent;
        failure.message = fmt::format("cannot resolve {}: {}", u.host(), describe(ec));
        co_return nullptr;
    }
    if (u.tls())
        c->tls.emplace(ex_, tls_);
    else
        c->plain.emplace(ex_);
    auto& tcp = c->tcp();
    tcp.expires_after(opts_.timeout);
    co_await tcp.async_connect(endpoints, asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
        failure.how = transport::not_sent;
        failure.message = fmt::format("cannot connect to {}: {}", u.host_header(), describe(ec));
        co_return nullptr;
    }
    tcp.socket().set_option(asio::ip::tcp::no_delay(true), ec);
    if (c->tls) {
        if (auto e = tls::prepare_client_stream(*c->tls, u.host()); e) {
            failure.how = transport::not_sent;
            failure.message = fmt::format("TLS set-up for {} failed: {}", u.host(), e.message());
            co_return nullptr;
        }
        tcp.expires_after(opts_.timeout);
        co_await c->tls->async_handshake(asio::ssl::stream_base::client,
                                         asio::redirect_error(asio::use_awaitable, ec));
        if (ec) {
            failure.how = transport::not_sent;
            std::string why = tls::verify_failure_reason(c->tls->native_handle());
            failure.message =
                why.empty()
                    ? fmt::format("TLS handshake with {} failed: {}", u.host_header(), describe(ec))
                    : fmt::format("TLS handshake with {} failed: certificate not trusted: {}",
                                  u.host_header(), why);
            co_return nullptr;
        }
    }
    c->last_used = std::chrono::steady_clock::now(); // the server's idle time starts here
    co_return c;
}

void http_client::release(std::unique_ptr<connection> c) {
    c->last_used = std::chrono::steady_clock::now();
    c->reused = false;
    auto& pool = idle_[c->origin];
    if (pool.size() < opts_.max_idle_per_origin)
        pool.push_back(std::move(c));
}

namespace {

// The request's bytes, written at once: cheaper than Beast's serializer on the hot path
// of polls, and one TLS record. nullopt when a value would break out of its header line.
std::optional<std::string> request_bytes(http::verb method, const core::http_url& u,
                                         const std::string& body, const header_list& headers) {
    bool post = method == http::verb::post;
    std::string host = u.host_header();
    bool clean = true;
    auto check = [&](std::string_view v) {
        clean = clean && v.find_first_of("\r\n") == std::string_view::npos;
        return v;
    };
    std::string wire =
        fmt::format("{} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: klingd/" KLINGD_VERSION
                    "\r\nAccept: application/json\r\n",
                    std::string_view(http::to_string(method)), check(u.target()), check(host));
    for (auto& [k, v] : headers)
        fmt::format_to(std::back_inserter(wire), "{}: {}\r\n", check(k), check(v));
    if (post || !body.empty())
        fmt::format_to(std::back_inserter(wire),
                       "Content-Type: application/json\r\nContent-Length: {}\r\n", body.size());
    wire += "\r\n";
    wire += body;
    if (!clean)
        return std::nullopt;
    return wire;
}

// The most an answer may be: 64 KiB of headers, and the caller's body limit.
template <class Body>
void limit_answer(http::response_parser<Body>& p, std::uint64_t max_body) {
    p.header_limit(64 * 1024);
    p.body_limit(max_body);
}

// Why a request got no complete answer: it never left (not sent), or it may have
// reached the server (lost), said for people.
void explain_request_failure(const error_code& ec, bool wrote, bool reused, bool post,
                             bool nothing_back, const core::http_url& u, core::http_outcome& out) {
    out.how = (!wrote && !reused) ? transport::not_sent : transport::lost;
    if (!wrote && reused && post)
        out.how = transport::not_sent; // the write itself failed: nothing left
    out.message =
        fmt::format("{} {} {}: {}", nothing_back ? "no answer from" : "answer cut short from",
                    u.host_header(), wrote ? "after sending" : "while sending", describe(ec));
}

// Why a download failed: too large, a local write error (the disk), or the network.
void explain_download_failure(const error_code& ec, const std::string& path,
                              const core::http_url& u, std::uint64_t max_bytes,
                              core::http_outcome& out) {
    if (ec == http::error::body_limit) {
        out.too_large = true;
        out.message = fmt::format("download larger than {} bytes", max_bytes);
        return;
    }
    out.how = transport::lost;
    if (is_local_write_error(ec)) {
        out.local_io = true;
        out.message = fmt::format("cannot write {}: {}", path, ec.message());
    } else {
        out.message = fmt::format("download from {} failed: {}", u.host_header(), describe(ec));
    }
}

core::http_outcome& outcome_of(core::http_outcome& o) {
    return o;
}
core::http_outcome& outcome_of(download_result& r) {
    return r.outcome;
}
} // namespace

template <class Result, class Exchange>
asio::awaitable<Result> http_client::on_connection(const core::http_url& u, bool for_post,
                                                   std::unique_ptr<connection> first,
                                                   Exchange exchange) {
    for (int attempt = 0;; ++attempt) {
        Result r;
        std::unique_ptr<connection> c;
        if (first && first->origin == u.origin()) // the caller found it fresh enough
            c = std::move(first);
        else
            c = co_await acquire(u, for_post, outcome_of(r));
        first.reset(); // one for another origin is closed
        if (!c)
            co_return r;
        if (!co_await exchange(c, r, attempt == 0))
            co_return r;
    }
}

asio::awaitable<core::http_outcome> http_client::request(http::verb method, const core::http_url& u,
                                                         std::string body, header_list headers,
                                                         std::uint64_t max_body, prepared ready) {
    bool post = method == http::verb::post;
    auto bytes = request_bytes(method, u, body, headers);
    if (!bytes) {
        core::http_outcome bad;
        bad.how = transport::not_sent;
        bad.message = fmt::format("a header for {} contains a line break", u.host_header());
        co_return bad;
    }
    const std::string& wire = *bytes;
    if (ready.c_ && !post && !fresh_enough(*ready.c_, false))
        ready.c_.reset(); // a GET takes another
    if (post && ready.c_ && !fresh_enough(*ready.c_, true)) {
        // Prepared, then held too long (a slow commit): the server may have closed it. A
        // new connection now would put a connect and a handshake after the caller's commit:
        // not sent, the caller prepares again.
        core::http_outcome stale;
        stale.how = transport::not_sent;
        stale.message =
            fmt::format("the connection to {} was idle too long before the send", u.host_header());
        co_return stale;
    }

    co_return co_await on_connection<core::http_outcome>(
        u, post, std::move(ready.c_),
        [&](std::unique_ptr<connection>& c, core::http_outcome& out,
            bool may_retry) -> asio::awaitable<bool> {
            bool reused = c->reused;
            error_code ec;
            http::response_parser<http::string_body> parser;
            limit_answer(parser, max_body);
            bool wrote = false;
            co_await c->with_stream([&](auto& s) -> asio::awaitable<void> {
                // One deadline for the whole exchange, the send and the answer: a request
                // takes at most the timeout once it is on a connection.
                c->tcp().expires_after(opts_.timeout);
                co_await asio::async_write(s, asio::buffer(wire),
                                           asio::redirect_error(asio::use_awaitable, ec));
                if (ec)
                    co_return;
                wrote = true;
                co_await http::async_read(s, c->buffer, parser,
                                          asio::redirect_error(asio::use_awaitable, ec));
            });
            if (ec) {
                bool nothing_back = !parser.got_some();
                // A pooled connection the server had closed: a GET is safe to send again.
                if (reused && nothing_back && is_stale_connection_error(ec) && !post && may_retry)
                    co_return true;
                if (ec == http::error::body_limit) {
                    out.too_large = true;
                    copy_rate_headers(parser, out);
                    out.message = fmt::format("answer body larger than {} bytes", max_body);
                    co_return false;
                }
                explain_request_failure(ec, wrote, reused, post, nothing_back, u, out);
                if (parser.is_header_done() && parser.get().result_int() / 100 == 2)
                    out.partial = parser.get().body(); // what came of a 2xx answer
                co_return false;
            }
            copy_rate_headers(parser, out);
            bool keep = parser.get().keep_alive();
            out.body = std::move(parser.get().body());
            if (keep)
                release(std::move(c));
            co_return false;
        });
}

asio::awaitable<download_result>
http_client::download(const core::http_url& u, const std::string& path, std::uint64_t max_bytes) {
    http::request<http::empty_body> req{http::verb::get, u.target(), 11};
    req.set(http::field::host, u.host_header());
    req.set(http::field::user_agent, "klingd/" KLINGD_VERSION);
    req.keep_alive(true);

    co_return co_await on_connection<download_result>(
        u, false, nullptr,
        [&](std::unique_ptr<connection>& c, download_result& r,
            bool may_retry) -> asio::awaitable<bool> {
            bool reused = c->reused;
            error_code ec;
            http::response_parser<http::file_body> parser;
            limit_answer(parser, max_bytes);
            std::string too_slow; // why the download was cut for its pace
            parser.get().body().open(path.c_str(), beast::file_mode::write, ec);
            if (ec) {
                r.outcome.how = transport::not_sent;
                r.outcome.local_io = true;
                r.outcome.message = fmt::format("cannot write {}: {}", path, ec.message());
                release(std::move(c));
                co_return false;
            }
            co_await c->with_stream([&](auto& s) -> asio::awaitable<void> {
                c->tcp().expires_after(opts_.timeout);
                co_await http::async_write(s, req, asio::redirect_error(asio::use_awaitable, ec));
                if (ec)
                    co_return;
                // The header first, then the body in pieces, each within the timeout,
                // and all of it at the minimum pace (a trickle is cut).
                c->tcp().expires_after(opts_.timeout);
                co_await http::async_read_header(s, c->buffer, parser,
                                                 asio::redirect_error(asio::use_awaitable, ec));
                if (ec)
                    co_return;
                std::optional<std::uint64_t> length;
                if (auto l = parser.content_length())
                    length = std::min<std::uint64_t>(*l, max_bytes); // no overflow of times
                core::download_pace pace(std::chrono::steady_clock::now(), length);
                while (!ec && !parser.is_done()) {
                    // A read waits no longer than the pace allows if nothing comes.
                    auto wait = pace.patience(std::chrono::steady_clock::now());
                    c->tcp().expires_after(
                        std::min(std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                     opts_.timeout),
                                 wait));
                    auto n = co_await http::async_read_some(
                        s, c->buffer, parser, asio::redirect_error(asio::use_awaitable, ec));
                    if (parser.is_done())
                        break; // complete: whatever its pace
                    too_slow = pace.on_bytes(n, std::chrono::steady_clock::now());
                    if (!too_slow.empty() && !ec)
                        ec = asio::error::timed_out;
                }
            });
            if (ec) {
                if (reused && !parser.got_some() && is_stale_connection_error(ec) && may_retry)
                    co_return true;
                if (parser.is_header_done())
                    copy_rate_headers(parser, r.outcome);
                explain_download_failure(ec, path, u, max_bytes, r.outcome);
                if (!too_slow.empty())
                    r.outcome.message =
                        fmt::format("download from {} cut: {}", u.host_header(), too_slow);
                co_return false;
            }
            copy_rate_headers(parser, r.outcome);
            if (auto it = parser.get().find(http::field::content_type); it != parser.get().end())
                r.content_type = std::string(it->value());
            if (auto it = parser.get().find(http::field::location); it != parser.get().end())
                r.location = std::string(it->value());
            r.bytes = parser.get().body().size();
            parser.get().body().close();
            if (parser.get().keep_alive())
                release(std::move(c));
            co_return false;
        });
}

} // namespace klingd::daemon
