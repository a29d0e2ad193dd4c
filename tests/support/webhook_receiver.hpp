// A webhook receiver for tests: plain HTTP on 127.0.0.1, one thread, every POST recorded
// (its headers and body) and answered with the status the test chose, or with a 500 for
// the first `fail_first` of them.
#pragma once

#include <atomic>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace klingd::test {

struct received_post {
    std::map<std::string, std::string> headers; // names in lower case
    std::string body;
};

class webhook_receiver {
public:
    webhook_receiver();
    ~webhook_receiver();

    std::string url() const; // http://127.0.0.1:PORT/hook
    std::vector<received_post> posts() const;
    std::atomic<int> status{200};
    std::atomic<int> fail_first{0};

private:
    void serve();

    int listen_fd_ = -1;
    int port_ = 0;
    std::atomic<bool> stop_{false};
    mutable std::mutex mu_;
    std::vector<received_post> posts_;
    std::thread thread_;
};

} // namespace klingd::test
