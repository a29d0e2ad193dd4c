// The test HTTP(S) client: Beast async operations driven to completion on a
// private io_context, so every step can have a deadline.
#include "tests/support/https_client.hpp"

#include "runtime/tls.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <cctype>
#include <optional>
#include <stdexcept>

namespace klingd::test {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using asio::ip::tcp;

namespace {

struct url_parts {
    bool tls = true;
    std::string host;
    std::string port;
    std::string target = "/";
};

// Throws std::runtime_error when url is not http(s)://host[:port][/target].
url_parts parse_url(const std::string& url) {
    url_parts u;
    std::string rest;
    if (url.starts_with("https://")) {
        rest = url.substr(8);
    } else if (url.starts_with("http://")) {
        u.tls = false;
        rest = url.substr(7);
    } else {
        throw std::runtime_error("not an http(s) URL: " + url);
    }
    auto slash = rest.find('/');
    std::string authority = rest.substr(0, slash);
    if (slash != std::string::npos)
        u.target = rest.substr(slash);
    auto colon = authority.rfind(':');
    if (colon != std::string::npos && authority.find(']', colon) == std::string::npos) {
        u.host = authority.substr(0, colon);
        u.port = authority.substr(colon + 1);
    } else {
        u.host = authority;
        u.port = u.tls ? "443" : "80";
    }
    if (u.host.size() > 2 && u.host.front() == '[')
        u.host = u.host.substr(1, u.host.size() - 2);
    if (u.host.empty())
        throw std::runtime_error("no host in URL: " + url);
    return u;
}

} // namespace

struct http_client::impl {
    url_parts base;
    std::chrono::milliseconds timeout;
    asio::io_context ioc;
    asio::ssl::context ctx;
    std::optional<beast::tcp_stream> plain;
    std::optional<beast::ssl_stream<beast::tcp_stream>> secure;
    beast::flat_buffer buffer;
    int opened = 0;

    impl(url_parts b, const std::string& ca_file, std::chrono::milliseconds t)
        : base(std::move(b)), timeout(t), ctx(tls::make_client_context(ca_file)) {}

    bool connected() const { return plain || secure; }

    beast::tcp_stream& lowest() { return secure ? beast::get_lowest_layer(*secure) : *plain; }

    void drop() {
        boost::system::error_code ec;
        if (connected())
            lowest().socket().close(ec);
        plain.reset();
        secure.reset();
        buffer.clear();
    }

    asio::awaitable<void> connect() {
        tcp::resolver resolver(ioc);
        auto endpoints = co_await resolver.async_resolve(base.host, base.port, asio::use_awaitable);
        beast::tcp_stream stream(ioc);
        stream.expires_after(timeout);
        co_await stream.async_connect(endpoints, asio::use_awaitable);
        ++opened;
        if (!base.tls) {
            plain.emplace(std::move(stream));
            co_return;
        }
        secure.emplace(std::move(stream), ctx);
        if (auto ec = tls::prepare_client_stream(*secure, base.host))
            throw boost::system::system_error(ec);
        lowest().expires_after(timeout);
        co_await secure->async_handshake(asio::ssl::stream_base::client, asio::use_awaitable);
    }

    template <typename Stream>
    asio::awaitable<void> exchange(Stream& stream, http::request<http::string_body>& req,
                                   http_reply& out) {
        lowest().expires_after(timeout);
        co_await http::async_write(stream, req, asio::use_awaitable);
        http::response_parser<http::string_body> parser;
        parser.body_limit(1ULL << 31);
        lowest().expires_after(timeout);
        co_await http::async_read(stream, buffer, parser, asio::use_awaitable);
        auto& res = parser.get();
        out.status = static_cast<int>(res.result_int());
        for (auto& field : res) {
            std::string name(field.name_string());
            for (auto& c : name)
                c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
            out.headers[name] = std::string(field.value());
        }
        out.body = std::move(res.body());
        if (!res.keep_alive())
            drop();
    }

    asio::awaitable<void> run(http::request<http::string_body>& req, http_reply& out) {
        if (!connected())
            co_await connect();
        if (secure)
            co_await exchange(*secure, req, out);
        else
            co_await exchange(*plain, req, out);
    }
};

http_client::http_client(const std::string& base_url, const std::string& ca_file,
                         std::chrono::milliseconds timeout)
    : impl_(std::make_unique<impl>(parse_url(base_url), ca_file, timeout)) {}

http_client::~http_client() = default;

int http_client::connections_opened() const {
    return impl_->opened;
}

http_reply http_client::request(const std::string& method, const std::string& target,
                                const std::string& body,
                                const std::map<std::string, std::string>& headers) {
    http_reply out;
    std::string path = target;
    if (target.starts_with("http://") || target.starts_with("https://"))
        path = parse_url(target).target;
    http::request<http::string_body> req;
    req.method_string(method);
    req.target(path);
    req.version(11);
    req.set(http::field::host, impl_->base.host + ":" + impl_->base.port);
    req.set(http::field::user_agent, "klingd-test");
    bool has_type = false;
    for (auto& [name, value] : headers) {
        req.set(name, value);
        has_type = has_type || beast::iequals(name, "content-type");
    }
    if (!body.empty() && !has_type)
        req.set(http::field::content_type, "application/json");
    req.body() = body;
    req.prepare_payload();

    auto done = asio::co_spawn(impl_->ioc, impl_->run(req, out), asio::use_future);
    impl_->ioc.restart();
    impl_->ioc.run();
    try {
        done.get();
    } catch (const std::exception& e) {
        impl_->drop();
        return http_reply{0, {}, {}, e.what()};
    }
    return out;
}

http_reply https_request(const std::string& method, const std::string& url, const std::string& body,
                         const std::map<std::string, std::string>& headers,
                         const std::string& ca_file) {
    auto u = parse_url(url);
    std::string base = std::string(u.tls ? "https://" : "http://") +
                       (u.host.find(':') != std::string::npos ? "[" + u.host + "]" : u.host) + ":" +
                       u.port;
    http_client client(base, ca_file);
    auto all = headers;
    all.emplace("Connection", "close");
    return client.request(method, u.target, body, all);
}

} // namespace klingd::test
