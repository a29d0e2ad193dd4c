// klingd as a systemd service: sd_notify messages seen on a datagram socket of
// the test's own (READY, STATUS, WATCHDOG at half the interval, STOPPING), and
// SIGHUP reloading what may change without a restart.
#include "tests/daemon/daemon_env.hpp"

#include <csignal>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <thread>
#include <unistd.h>

namespace {

using namespace klingd::test;
using namespace std::chrono_literals;

// A bound AF_UNIX datagram socket collecting what klingd sends to $NOTIFY_SOCKET.
class notify_socket {
public:
    explicit notify_socket(const std::string& path) : path_(path) {
        fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
        if (::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0)
            throw std::runtime_error("bind " + path);
        timeval tv{0, 50000};
        ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    }
    ~notify_socket() {
        ::close(fd_);
        ::unlink(path_.c_str());
    }
    // Collects datagrams for a while; each with the time it arrived.
    void collect(std::chrono::milliseconds for_how_long) {
        auto end = std::chrono::steady_clock::now() + for_how_long;
        char buf[4096];
        while (std::chrono::steady_clock::now() < end) {
            ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
            if (n > 0)
                messages.emplace_back(std::chrono::steady_clock::now(),
                                      std::string(buf, static_cast<std::size_t>(n)));
        }
    }
    std::vector<std::pair<std::chrono::steady_clock::time_point, std::string>> messages;
    bool saw(const std::string& part) const {
        for (auto& [t, m] : messages)
            if (m.find(part) != std::string::npos)
                return true;
        return false;
    }

private:
    std::string path_;
    int fd_;
};

TEST(service, notifies_ready_status_watchdog_and_stopping) {
    daemon_env env;
    notify_socket ns(env.dir() + "/notify.sock");
    env.start({{"NOTIFY_SOCKET", env.dir() + "/notify.sock"}, {"WATCHDOG_USEC", "400000"}});
    ns.collect(1500ms);
    EXPECT_TRUE(ns.saw("READY=1"));
    EXPECT_TRUE(ns.saw("STATUS=0 pending, 0 in flight, 0 completed"))
        << (ns.messages.empty() ? "" : ns.messages[0].second);
    std::vector<std::chrono::steady_clock::time_point> pings;
    for (auto& [t, m] : ns.messages)
        if (m == "WATCHDOG=1")
            pings.push_back(t);
    ASSERT_GE(pings.size(), 4u) << "WATCHDOG=1 every 200 ms (half of WATCHDOG_USEC)";
    for (std::size_t i = 1; i < pings.size(); ++i) {
        auto gap = pings[i] - pings[i - 1];
        EXPECT_GT(gap, 100ms);
        EXPECT_LT(gap, 500ms);
    }
    env.signal(SIGTERM);
    ns.collect(1000ms);
    EXPECT_TRUE(ns.saw("STOPPING=1"));
}

TEST(service, sighup_applies_a_new_budget_without_a_restart) {
    daemon_env env;
    env.start();
    auto before = env.api("GET", "/v1/stats");
    EXPECT_EQ(before.body.at("budget").at("configured_rpm").as_int64(), 3000);
    std::string cfg = read_file(env.config_path());
    auto at = cfg.find("requests_per_minute = ");
    cfg.replace(at, cfg.find('\n', at) - at, "requests_per_minute = 1234");
    at = cfg.find("klingd.sock");
    cfg.replace(at, 11, "elsewhere.sock"); // needs a restart: reported, not applied
    write_file(env.config_path(), cfg);
    env.signal(SIGHUP);
    ASSERT_TRUE(eventually(
        [&] {
            return env.api("GET", "/v1/stats").body.at("budget").at("configured_rpm").as_int64() ==
                   1234;
        },
        5s))
        << env.log();
    EXPECT_NE(env.log().find("reload: api.requests_per_minute: 3000 -> 1234"), std::string::npos)
        << env.log();
    EXPECT_NE(env.log().find("control.socket changed to"), std::string::npos);
    EXPECT_EQ(env.api("GET", "/v1/health").status, 200) << "still on the old socket";
    // A broken file on reload: the daemon keeps running with what it has.
    write_file(env.config_path(), "[api\n");
    env.signal(SIGHUP);
    ASSERT_TRUE(eventually(
        [&] { return env.log().find("keeping the running one") != std::string::npos; }, 5s));
    EXPECT_EQ(env.api("GET", "/v1/stats").body.at("budget").at("configured_rpm").as_int64(), 1234);
    EXPECT_TRUE(env.running());
}

} // namespace
