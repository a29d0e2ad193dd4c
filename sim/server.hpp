// segmind-sim's network side: accepts TCP connections (TLS or plain), and for
// each one runs a keep-alive loop that reads a request, asks handle_request,
// waits, resets, cuts or writes the answer as told. One io_context thread.
#pragma once

#include "sim/service.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <chrono>

namespace klingd::sim {

class server {
public:
    // tls null means plain HTTP. Throws boost::system::system_error when it cannot listen.
    server(boost::asio::io_context& ioc, const boost::asio::ip::tcp::endpoint& listen,
           boost::asio::ssl::context* tls, service& svc, bool log_requests);

    boost::asio::ip::tcp::endpoint local_endpoint() const { return acceptor_.local_endpoint(); }
    void start();
    void stop();

private:
    boost::asio::awaitable<void> accept_loop();
    boost::asio::awaitable<void> session(boost::asio::ip::tcp::socket socket);
    // Returns false when the connection must be dropped without a clean close.
    template <typename Stream>
    boost::asio::awaitable<bool> serve(Stream& stream);
    // Wall-clock time that never goes back: start time plus steady elapsed time.
    time_point now() const;

    boost::asio::io_context& ioc_;
    boost::asio::ip::tcp::acceptor acceptor_;
    boost::asio::ssl::context* tls_;
    service& svc_;
    bool log_requests_;
    time_point wall_start_;
    std::chrono::steady_clock::time_point steady_start_;
};

} // namespace klingd::sim
