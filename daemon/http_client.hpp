// The HTTPS (and loopback HTTP) client: keep-alive connections pooled by origin,
// SNI and host name verification on every TLS connection, a timeout on every
// operation, bodies bounded in size, downloads streamed to a file. Every
// outcome says whether the request could have reached the server, because a
// submit whose answer was lost may have created a paid request.
#pragma once

#include "core/api_answer.hpp"
#include "core/url.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/beast/http/verb.hpp>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace klingd::daemon {

struct client_options {
    std::chrono::milliseconds timeout{30000};
    std::size_t max_idle_per_origin = 4;
    // A pooled connection idle longer than this is not used for a POST: a server
    // that closed it meanwhile would make the POST's outcome unknown.
    std::chrono::milliseconds post_reuse_idle{4000};
    std::chrono::milliseconds max_idle{50000};
};

struct download_result {
    core::http_outcome outcome; // body empty; status and headers as received
    std::string content_type;
    std::string location; // the Location header of a 3xx answer
    std::uint64_t bytes = 0;
};

using header_list = std::vector<std::pair<std::string, std::string>>;

class http_client {
public:
    struct connection;

    // A connection made ready for one request (resolved, connected, TLS handshake done),
    // or why none could be: lets a caller commit "this request is being sent" only once
    // nothing but the send itself remains.
    class prepared {
    public:
        prepared();
        prepared(prepared&&) noexcept;
        prepared& operator=(prepared&&) noexcept;
        ~prepared();
        explicit operator bool() const { return c_ != nullptr; }
        const core::http_outcome& failure() const { return failure_; } // when false

    private:
        friend class http_client;
        std::unique_ptr<connection> c_;
        core::http_outcome failure_;
    };

    http_client(boost::asio::any_io_executor ex, boost::asio::ssl::context& tls,
                client_options opts);
    ~http_client();

    // A connection for a request to u's origin, pooled or new.
    boost::asio::awaitable<prepared> prepare(const core::http_url& u, bool for_post);

    // One exchange. max_body: larger bodies are not read (outcome.too_large). On `ready`
    // when given and still fresh enough for the method (else on a pooled or new one; but
    // a POST whose prepared connection went stale is not sent at all).
    boost::asio::awaitable<core::http_outcome> request(boost::beast::http::verb method,
                                                       const core::http_url& u, std::string body,
                                                       header_list headers, std::uint64_t max_body,
                                                       prepared ready = {});

    // Streams a GET's body into path (created or truncated). A non-2xx answer,
    // a body over max_bytes or a transport error leave a partial file to delete.
    boost::asio::awaitable<download_result>
    download(const core::http_url& u, const std::string& path, std::uint64_t max_bytes);

    void set_timeout(std::chrono::milliseconds t) { opts_.timeout = t; }
    void set_max_idle_per_origin(std::size_t n) { opts_.max_idle_per_origin = n; }

    // Closes pooled connections idle longer than max_idle at `now` (a media host seen once
    // keeps no socket open); the owner calls it now and then.
    void close_idle(std::chrono::steady_clock::time_point now);
    std::size_t idle_connections() const;

private:
    boost::asio::awaitable<std::unique_ptr<connection>> acquire(const core::http_url& u,
                                                                bool for_post,
                                                                core::http_outcome& failure,
                                                                bool preparing = false);
    void release(std::unique_ptr<connection> c);
    // Runs exchange(connection, result, may_retry) on `first` when given (the caller found
    // it fresh enough), else on a pooled or new connection; when it
    // asks (true: a pooled connection the server had closed, nothing received, and a
    // retry allowed), once more on another. Result: core::http_outcome or download_result.
    template <class Result, class Exchange>
    boost::asio::awaitable<Result> on_connection(const core::http_url& u, bool for_post,
                                                 std::unique_ptr<connection> first,
                                                 Exchange exchange);
    // May a connection idle since its last use carry this request at `now` (preparing: a
    // POST to be sent after a commit, so with time to spare)?
    bool fresh_enough(const connection& c, bool for_post,
                      std::chrono::steady_clock::time_point now = std::chrono::steady_clock::now(),
                      bool preparing = false) const;

    boost::asio::any_io_executor ex_;
    boost::asio::ssl::context& tls_;
    client_options opts_;
    std::map<std::string, std::vector<std::unique_ptr<connection>>> idle_;
};

} // namespace klingd::daemon
