// The receiver: Beast's synchronous parser on accepted sockets, one at a time.
#include "tests/support/webhook_receiver.hpp"

#include <arpa/inet.h>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <netinet/in.h>
#include <poll.h>
#include <stdexcept>
#include <sys/socket.h>
#include <unistd.h>

namespace klingd::test {

namespace {
namespace http = boost::beast::http;

// Reads one request from fd (blocking, with a timeout) and answers it; false on trouble.
bool serve_one(int fd, webhook_receiver& r, std::vector<received_post>& into, std::mutex& mu) {
    timeval tv{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    std::string buf;
    char chunk[8192];
    http::request_parser<http::string_body> parser;
    parser.body_limit(16 << 20);
    boost::system::error_code ec;
    std::size_t used = 0;
    while (!parser.is_done()) {
        auto n = ::recv(fd, chunk, sizeof chunk, 0);
        if (n <= 0)
            return false;
        buf.append(chunk, static_cast<std::size_t>(n));
        while (!parser.is_done() && used < buf.size()) {
            auto k = parser.put(boost::asio::buffer(buf.data() + used, buf.size() - used), ec);
            if (ec == http::error::need_more) {
                ec = {};
                break;
            }
            if (ec)
                return false;
            used += k;
            if (k == 0)
                break;
        }
    }
    auto& req = parser.get();
    received_post p;
    for (auto& f : req) {
        std::string name(f.name_string());
        for (auto& c : name)
            c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        p.headers[name] = std::string(f.value());
    }
    p.body = req.body();
    int status;
    {
        std::lock_guard lock(mu);
        into.push_back(std::move(p));
        status = r.fail_first > 0 ? (--r.fail_first, 500) : r.status.load();
    }
    std::string answer = "HTTP/1.1 " + std::to_string(status) +
                         " X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
    ::send(fd, answer.data(), answer.size(), MSG_NOSIGNAL);
    return true;
}

} // namespace

webhook_receiver::webhook_receiver() {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::listen(listen_fd_, 16) != 0)
        throw std::runtime_error("webhook_receiver: cannot listen");
    socklen_t len = sizeof a;
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { serve(); });
}

webhook_receiver::~webhook_receiver() {
    stop_ = true;
    thread_.join();
    ::close(listen_fd_);
}

std::string webhook_receiver::url() const {
    return "http://127.0.0.1:" + std::to_string(port_) + "/hook";
}

std::vector<received_post> webhook_receiver::posts() const {
    std::lock_guard lock(mu_);
    return posts_;
}

void webhook_receiver::serve() {
    while (!stop_) {
        pollfd p{listen_fd_, POLLIN, 0};
        if (::poll(&p, 1, 100) <= 0)
            continue;
        int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        serve_one(fd, *this, posts_, mu_);
        ::close(fd);
    }
}

} // namespace klingd::test
