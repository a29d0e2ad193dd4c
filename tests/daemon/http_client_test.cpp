// The HTTPS client against segmind-sim: idle pooled connections are closed once their
// idle time has passed, and a POST goes on the connection prepared for it, or not at all.
#include "daemon/http_client.hpp"
#include "runtime/tls.hpp"
#include "tests/support/await.hpp"
#include "tests/support/https_client.hpp"
#include "tests/support/sim_process.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/beast/http/verb.hpp>
#include <boost/json.hpp>
#include <gtest/gtest.h>

namespace {

using namespace klingd;
using namespace std::chrono_literals;

TEST(http_client, idle_pooled_connections_are_closed_after_the_idle_time) {
    test::sim_process sim;
    boost::asio::io_context io;
    auto tls = tls::make_client_context(sim.ca_file());
    daemon::client_options opts;
    opts.max_idle = 50s;
    daemon::http_client client(io.get_executor(), tls, opts);
    auto u = core::http_url::parse(sim.base_url() + "/v2/requests/none/status");
    ASSERT_TRUE(u);
    std::string no_body;
    daemon::header_list no_headers;
    auto out = test::await(
        io, client.request(boost::beast::http::verb::get, *u, no_body, no_headers, 1 << 20));
    ASSERT_EQ(out.how, core::http_outcome::transport::ok) << out.message;
    EXPECT_EQ(out.status, 401) << out.body; // no key: an answer all the same, kept alive
    EXPECT_EQ(client.idle_connections(), 1u);
    auto now = std::chrono::steady_clock::now();
    client.close_idle(now + 10s); // idle, but not for long
    EXPECT_EQ(client.idle_connections(), 1u);
    client.close_idle(now + opts.max_idle + 1s);
    EXPECT_EQ(client.idle_connections(), 0u);
}

// A submit is prepared (connected, TLS done) before its "submitting" is committed. Sent
// at once, it goes on that connection; held past the POST reuse idle time (a slow
// commit), it is not sent at all, rather than after a new connect and handshake.
TEST(http_client, a_post_goes_on_its_prepared_connection_or_is_not_sent) {
    test::sim_process sim({"--api-key", "k1"});
    boost::asio::io_context io;
    auto tls = tls::make_client_context(sim.ca_file());
    auto u = core::http_url::parse(sim.base_url() + "/v2/kling-o1");
    ASSERT_TRUE(u);
    std::string body =
        R"({"prompt":"prepared merge @Image1","image_urls":["https://in.example/a.png"]})";
    auto submissions = [&] {
        auto r = test::https_request("GET", sim.base_url() + "/sim/stats", {}, {}, sim.ca_file());
        return boost::json::parse(r.body).at("submissions").to_number<int>();
    };
    for (bool stale : {false, true}) {
        daemon::client_options opts;
        if (stale)
            opts.post_reuse_idle = 0ms; // any wait at all is too long
        daemon::http_client client(io.get_executor(), tls, opts);
        auto ready = test::await(io, client.prepare(*u, true));
        ASSERT_TRUE(ready) << ready.failure().message;
        daemon::header_list headers{{"x-api-key", "k1"}};
        std::string sent = body;
        int before = submissions();
        auto out = test::await(io, client.request(boost::beast::http::verb::post, *u, sent, headers,
                                                  1 << 20, std::move(ready)));
        if (stale) {
            EXPECT_EQ(out.how, core::http_outcome::transport::not_sent) << out.message;
            EXPECT_EQ(submissions(), before) << "sent after all";
        } else {
            ASSERT_EQ(out.how, core::http_outcome::transport::ok) << out.message;
            EXPECT_EQ(out.status, 200) << out.body;
            EXPECT_EQ(submissions(), before + 1);
        }
    }
}

} // namespace
