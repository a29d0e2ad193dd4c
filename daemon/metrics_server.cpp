#include "daemon/metrics_server.hpp"

#include "daemon/control_api.hpp"
#include "runtime/log.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/v6_only.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>
#include <stdexcept>

namespace klingd::daemon {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

metrics_server::metrics_server(asio::io_context& io, const config::settings& s, engine& e)
    : io_(io), settings_(s), engine_(e) {}

metrics_server::~metrics_server() {
    stop();
}

void metrics_server::start() {
    const auto& m = settings_.metrics;
    if (m.listen.empty())
        return;
    boost::system::error_code ec;
    auto address = asio::ip::make_address(m.address, ec);
    if (ec)
        throw std::runtime_error(fmt::format("metrics.listen \"{}\": {}", m.listen, ec.message()));
    tcp::endpoint at(address, m.port);
    tcp::acceptor a(io_);
    a.open(at.protocol(), ec);
    if (!ec)
        a.set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec && at.protocol() == tcp::v6())
        a.set_option(asio::ip::v6_only(true), ec);
    if (!ec)
        a.bind(at, ec);
    if (!ec)
        a.listen(asio::socket_base::max_listen_connections, ec);
    if (ec)
        throw std::runtime_error(fmt::format(
            "cannot listen on metrics.listen \"{}\": {} (another program has the port, or the "
            "address is not this host's)",
            m.listen, ec.message()));
    port_ = a.local_endpoint().port();
    acceptor_.emplace(std::move(a));
    auto bound = acceptor_->local_endpoint();
    log::notice("metrics: serving GET /metrics and /v1/health on {}",
                bound.address().is_v6() ? fmt::format("[{}]:{}", bound.address().to_string(), port_)
                                        : fmt::format("{}:{}", bound.address().to_string(), port_));
    asio::co_spawn(io_, accept_loop(), asio::detached);
}

void metrics_server::stop() {
    if (acceptor_) {
        boost::system::error_code ec;
        acceptor_->close(ec);
        acceptor_.reset();
    }
}

asio::awaitable<void> metrics_server::accept_loop() {
    while (acceptor_ && acceptor_->is_open()) {
        boost::system::error_code ec;
        auto sock = co_await acceptor_->async_accept(asio::redirect_error(asio::use_awaitable, ec));
        if (ec) {
            if (ec == asio::error::operation_aborted || !acceptor_ || !acceptor_->is_open())
                co_return;
            log::warning("metrics: accept failed: {}; trying again in 100 ms", ec.message());
            // Out of file descriptors (EMFILE) fails at once, every time: not a busy loop.
            asio::steady_timer pause(io_, std::chrono::milliseconds(100));
            co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
            continue;
        }
        if (sessions_ >= max_connections)
            continue; // closes sock: a scraper needs one
        asio::co_spawn(io_, session(std::move(sock)), asio::detached);
    }
}

asio::awaitable<void> metrics_server::session(tcp::socket sock) {
    ++sessions_;
    struct guard {
        std::size_t& n;
        ~guard() { --n; }
    } g{sessions_};
    beast::tcp_stream stream(std::move(sock));
    beast::flat_buffer buffer(8192);
    http::request_parser<http::string_body> parser;
    parser.header_limit(8192);
    parser.body_limit(0);
    boost::system::error_code ec;
    stream.expires_after(std::chrono::seconds(10));
    co_await http::async_read(stream, buffer, parser,
                              asio::redirect_error(asio::use_awaitable, ec));
    if (ec == http::error::end_of_stream || ec == asio::error::eof ||
        ec == asio::error::connection_reset || ec == beast::error::timeout)
        co_return;
    control_response res;
    if (ec) {
        res = error_response(11, http::status::bad_request,
                             fmt::format("bad request: {}", ec.message()));
    } else {
        auto req = parser.release();
        std::string_view path = req.target();
        path = path.substr(0, path.find('?'));
        if (path != "/metrics" && path != "/v1/health") {
            res = error_response(req.version(), http::status::not_found,
                                 "only GET /metrics and GET /v1/health are served here; the "
                                 "control API is on klingd's Unix socket");
        } else if (req.method() != http::verb::get) {
            res = error_response(req.version(), http::status::method_not_allowed,
                                 "only GET is allowed here");
            res.set(http::field::allow, "GET");
        } else {
            control_request only;
            only.method(http::verb::get);
            only.target(path);
            only.version(req.version());
            auto outcome = co_await route_request(only, engine_, peer_info{});
            res = std::move(std::get<control_response>(outcome));
        }
    }
    res.keep_alive(false);
    stream.expires_after(std::chrono::seconds(10));
    co_await http::async_write(stream, res, asio::redirect_error(asio::use_awaitable, ec));
    stream.socket().shutdown(tcp::socket::shutdown_both, ec);
}

} // namespace klingd::daemon
