// The connection loops of segmind-sim, over TLS or plain TCP, with a deadline
// on every read, write, handshake and shutdown.
#include "sim/server.hpp"

#include "runtime/log.hpp"
#include "sim/handler.hpp"

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/serializer.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>

namespace klingd::sim {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using asio::ip::tcp;

namespace {

constexpr auto idle_timeout = std::chrono::seconds(60);
constexpr auto io_timeout = std::chrono::seconds(30);
constexpr auto handshake_timeout = std::chrono::seconds(10);
constexpr std::uint64_t max_request_body = 8 * 1024 * 1024;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

// An upload carries its files as base64 in JSON: 4/3 of the largest file, and room for
// the rest of the body. Never below what every request may carry.
std::uint64_t upload_body_limit(const settings& s) {
    return std::max(max_request_body, s.upload_max_bytes / 3 * 4 + (std::uint64_t{1} << 20));
}

bool is_upload(const http_request& req) {
    auto target = std::string_view(req.target());
    return req.method() == http::verb::post &&
           target.substr(0, target.find('?')) == "/upload-asset";
}

// Closes with an RST rather than a FIN.
void reset_connection(beast::tcp_stream& tcp) {
    boost::system::error_code ec;
    tcp.socket().set_option(tcp::socket::linger(true, 0), ec);
    tcp.socket().close(ec);
}

} // namespace

server::server(asio::io_context& ioc, const tcp::endpoint& listen, asio::ssl::context* tls,
               service& svc, bool log_requests)
    : ioc_(ioc), acceptor_(ioc), tls_(tls), svc_(svc), log_requests_(log_requests),
      wall_start_(std::chrono::system_clock::now()),
      steady_start_(std::chrono::steady_clock::now()) {
    acceptor_.open(listen.protocol());
    acceptor_.set_option(tcp::acceptor::reuse_address(true));
    acceptor_.bind(listen);
    acceptor_.listen(asio::socket_base::max_listen_connections);
}

time_point server::now() const {
    return wall_start_ + std::chrono::duration_cast<time_point::duration>(
                             std::chrono::steady_clock::now() - steady_start_);
}

void server::start() {
    asio::co_spawn(ioc_, accept_loop(), asio::detached);
}

void server::stop() {
    boost::system::error_code ec;
    acceptor_.close(ec);
}

asio::awaitable<void> server::accept_loop() {
    while (acceptor_.is_open()) {
        auto [ec, socket] = co_await acceptor_.async_accept(use_tuple);
        if (ec == asio::error::operation_aborted)
            break;
        if (ec) {
            log::warning("segmind-sim: accept failed: {}", ec.message());
            asio::steady_timer pause(ioc_, std::chrono::milliseconds(50));
            co_await pause.async_wait(use_tuple);
            continue;
        }
        asio::co_spawn(ioc_, session(std::move(socket)), [](std::exception_ptr e) {
            try {
                if (e)
                    std::rethrow_exception(e);
            } catch (const std::exception& x) {
                log::error("segmind-sim: connection dropped: {}", x.what());
            }
        });
    }
}

asio::awaitable<void> server::session(tcp::socket socket) {
    boost::system::error_code ec;
    socket.set_option(tcp::no_delay(true), ec);
    beast::tcp_stream tcp(std::move(socket));
    if (!tls_) {
        if (co_await serve(tcp))
            tcp.socket().shutdown(tcp::socket::shutdown_send, ec);
        co_return;
    }
    beast::ssl_stream<beast::tcp_stream> stream(std::move(tcp), *tls_);
    beast::get_lowest_layer(stream).expires_after(handshake_timeout);
    auto [hec] = co_await stream.async_handshake(asio::ssl::stream_base::server, use_tuple);
    if (hec)
        co_return;
    if (co_await serve(stream)) {
        beast::get_lowest_layer(stream).expires_after(handshake_timeout);
        co_await stream.async_shutdown(use_tuple);
    }
}

template <typename Stream>
asio::awaitable<bool> server::serve(Stream& stream) {
    auto& tcp = beast::get_lowest_layer(stream);
    beast::flat_buffer buffer;
    for (;;) {
        http::request_parser<http::string_body> parser;
        // The largest limit first (a Content-Length is checked against it with the header),
        // then the one of the request's route before any of its body is read.
        parser.body_limit(upload_body_limit(svc_.current()));
        tcp.expires_after(idle_timeout);
        auto [hec, hread] = co_await http::async_read_header(stream, buffer, parser, use_tuple);
        bool upload = is_upload(parser.get());
        boost::system::error_code rec = hec;
        if (!rec) {
            if (!upload)
                parser.body_limit(max_request_body);
            tcp.expires_after(idle_timeout);
            auto [bec, bread] = co_await http::async_read(stream, buffer, parser, use_tuple);
            rec = bec;
        }
        if (rec == http::error::body_limit) {
            // What a gateway does: a 413 before the API sees anything, then close.
            auto kind = upload ? endpoint::upload : endpoint::other;
            svc_.count_answer(kind, 413);
            if (log_requests_)
                log::info("{} {} {} -> 413 body too large", endpoint_name(kind),
                          std::string_view(parser.get().method_string()),
                          std::string_view(parser.get().target()));
            http_response res{http::status::payload_too_large, parser.get().version()};
            res.set(http::field::server, "segmind-sim");
            res.set(http::field::content_type, "application/json");
            res.keep_alive(false);
            res.body().text = R"({"error":"Request body too large"})";
            res.prepare_payload();
            tcp.expires_after(io_timeout);
            auto [wec, written] = co_await http::async_write(stream, res, use_tuple);
            co_return !wec;
        }
        if (rec)
            co_return rec == http::error::end_of_stream;

        const auto& req = parser.get();
        reply r = handle_request(req, svc_, now());
        if (r.delay_s > 0) {
            asio::steady_timer delay(ioc_, std::chrono::duration_cast<std::chrono::nanoseconds>(
                                               std::chrono::duration<double>(r.delay_s)));
            co_await delay.async_wait(use_tuple);
        }
        if (log_requests_) {
            log::info("{} {} {} -> {}{}{}", r.control ? "control" : endpoint_name(r.kind),
                      std::string_view(req.method_string()), std::string_view(req.target()),
                      r.reset ? "reset" : std::to_string(r.response.result_int()),
                      r.truncate ? " truncated" : "", r.delay_s > 0 ? " delayed" : "");
        }
        if (r.reset) {
            reset_connection(tcp);
            co_return false;
        }
        http::response_serializer<payload_body> serializer(r.response);
        if (r.trickle)
            serializer.limit(512);
        asio::steady_timer pace(ioc_);
        while (!serializer.is_done()) {
            tcp.expires_after(io_timeout);
            auto [wec, written] = co_await http::async_write_some(stream, serializer, use_tuple);
            if (wec)
                co_return false;
            if (r.trickle && !serializer.is_done()) {
                pace.expires_after(std::chrono::milliseconds(500));
                co_await pace.async_wait(use_tuple);
            }
        }
        if (r.truncate) {
            boost::system::error_code ec;
            tcp.socket().close(ec);
            co_return false;
        }
        if (!r.response.keep_alive())
            co_return true;
    }
}

} // namespace klingd::sim
