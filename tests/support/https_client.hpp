// A small synchronous HTTP(S) client for tests, built on Beast: one call, one
// answer, with TLS verified against a given CA file and a deadline on every step.
// Transport trouble (refused, reset, cut short, timeout) is reported, not thrown.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <string>

namespace klingd::test {

struct http_reply {
    int status = 0;                             // 0: no complete answer, see error
    std::map<std::string, std::string> headers; // names in lower case
    std::string body;
    std::string error; // empty when a complete answer came
};

// Sends one request on its own connection. A non-empty body goes as
// application/json unless headers name another content-type.
// Never throws for network trouble: returns status 0 and error instead.
http_reply https_request(const std::string& method, const std::string& url,
                         const std::string& body = {},
                         const std::map<std::string, std::string>& headers = {},
                         const std::string& ca_file = {});

// A keep-alive connection to one server (http:// or https://), opened again
// when the server closed it. Requests take a target ("/v2/...") or a full URL
// on the same server.
class http_client {
public:
    // Throws std::runtime_error when base_url is not http(s)://host[:port].
    http_client(const std::string& base_url, const std::string& ca_file = {},
                std::chrono::milliseconds timeout = std::chrono::seconds(30));
    ~http_client();
    http_client(const http_client&) = delete;
    http_client& operator=(const http_client&) = delete;

    // Never throws for network trouble: returns status 0 and error instead.
    http_reply request(const std::string& method, const std::string& target,
                       const std::string& body = {},
                       const std::map<std::string, std::string>& headers = {});
    int connections_opened() const;

private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

} // namespace klingd::test
