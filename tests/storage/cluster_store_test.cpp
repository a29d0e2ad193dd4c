// The cluster's claims on a real PostgreSQL server: two or three pg_repository objects
// stand for nodes (each with its own connection). Names are unique; no job is held by
// two nodes; a node that stops renewing loses its claims and can no longer write.
#include "storage/pg_repository.hpp"
#include "tests/support/await.hpp"
#include "tests/support/child_process.hpp"
#include "tests/support/pg_server.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <gtest/gtest.h>
#include <set>

namespace {

using namespace klingd;
using core::job_state;
using core::milliseconds;
using core::time_point;
using test::await;

const time_point t0{milliseconds(1'800'000'000'000)};

template <class T>
T ok(storage::async_result<T> call) {
    auto r = await(std::move(call));
    EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().message());
    if constexpr (!std::is_void_v<T>)
        return r ? std::move(*r) : T{};
}

storage::node_identity node(std::string name, milliseconds takeover = milliseconds(30000),
                            std::string host = "host-a", std::int64_t pid = 1000) {
    storage::node_identity n;
    n.name = std::move(name);
    n.host_id = std::move(host);
    n.pid = pid;
    n.version = "test";
    n.requests_per_minute = 60;
    n.takeover = takeover;
    return n;
}

class cluster_store_test : public ::testing::Test {
protected:
    std::string db = test::fresh_pg_database();
    std::unique_ptr<storage::pg_repository> open() {
        auto r = std::make_unique<storage::pg_repository>(db);
        r->pid_alive = [](std::int64_t) {
            return true;
        };
        ok(r->open());
        return r;
    }
    void insert(storage::pg_repository& r, int n, const std::string& prefix = "j") {
        std::vector<core::job_spec> specs;
        std::vector<std::string> sources;
        for (int i = 0; i < n; ++i) {
            specs.push_back({prefix + std::to_string(i), "kling-o1", R"({"prompt":"p"})", 0});
            sources.emplace_back();
        }
        ok(r.insert(std::move(specs), t0, std::move(sources)));
    }
};

TEST_F(cluster_store_test, a_live_name_is_refused_a_dead_or_silent_one_is_taken_over) {
    auto a = open();
    ok(a->join(node("n1")));
    auto b = open();
    auto refused = await(b->join(node("n1", milliseconds(30000), "host-b", 2000)));
    ASSERT_FALSE(refused);
    EXPECT_TRUE(refused.error() == core::errc::node_name_taken) << refused.error().message();
    EXPECT_NE(refused.error().message().find("another cluster.node"), std::string::npos);
    // The same host, and the process that had the name is gone: taken over at once.
    auto c = open();
    c->pid_alive = [](std::int64_t pid) {
        return pid != 1000;
    };
    ok(c->join(node("n1", milliseconds(30000), "host-a", 3000)));
    auto r = ok(a->renew());
    EXPECT_FALSE(r.node_alive) << "the old holder of the name hears it is gone";
    // A name silent for its takeover time is free for another host.
    auto d = open();
    ok(d->join(node("n2", milliseconds(300), "host-d", 4000)));
    auto e = open();
    ASSERT_TRUE(test::eventually(
        [&] { return await(e->join(node("n2", milliseconds(300), "host-e", 5000))).has_value(); },
        std::chrono::seconds(10)));
}

TEST_F(cluster_store_test, nodes_claiming_at_once_never_take_the_same_job) {
    auto setup = open();
    insert(*setup, 300);
    std::vector<std::unique_ptr<storage::pg_repository>> nodes;
    for (int i = 0; i < 3; ++i) {
        nodes.push_back(open());
        ok(nodes.back()->join(node("n" + std::to_string(i), milliseconds(30000), "h", 100 + i)));
    }
    // Claims in small batches from three nodes, interleaved on one loop.
    boost::asio::io_context io;
    std::vector<std::vector<std::string>> got(3);
    for (int i = 0; i < 3; ++i)
        boost::asio::co_spawn(
            io,
            [&, i]() -> boost::asio::awaitable<void> {
                for (;;) {
                    auto c = co_await nodes[static_cast<std::size_t>(i)]->claim(7, 0);
                    EXPECT_TRUE(c);
                    if (!c || c->jobs.empty())
                        co_return;
                    for (auto& j : c->jobs) {
                        EXPECT_EQ(j.node, "n" + std::to_string(i));
                        EXPECT_FALSE(j.params.empty()) << "a pending job carries its params";
                        got[static_cast<std::size_t>(i)].push_back(j.id);
                    }
                }
            },
            boost::asio::detached);
    io.run();
    std::set<std::string> all;
    std::size_t total = 0;
    for (auto& g : got) {
        EXPECT_GT(g.size(), 0u) << "each node took some";
        total += g.size();
        all.insert(g.begin(), g.end());
    }
    EXPECT_EQ(total, 300u);
    EXPECT_EQ(all.size(), 300u) << "no job was taken twice";
}

TEST_F(cluster_store_test, a_lapsed_claim_passes_to_another_node_and_the_old_holder_cannot_write) {
    auto a = open();
    insert(*a, 1);
    ok(a->join(node("a", milliseconds(400), "h", 1)));
    auto mine = ok(a->claim(1, 0));
    ASSERT_EQ(mine.jobs.size(), 1u);
    auto j = mine.jobs[0];
    EXPECT_GE(mine.l.until - mine.l.db_now, milliseconds(400));
    // a holds it: b cannot take it, nor write it.
    auto b = open();
    ok(b->join(node("b", milliseconds(400), "h", 2)));
    EXPECT_TRUE(ok(b->claim(5, 5)).jobs.empty());
    EXPECT_FALSE(ok(b->claim_one("j0")));
    j.state = job_state::queued;
    j.request_id = "r-a";
    j.submitted_at = t0;
    EXPECT_EQ(ok(b->save({{j, {}}})), std::vector<std::string>{"j0"});
    EXPECT_TRUE(ok(a->save({{j, {{t0, "queued", "submitted", "r-a"}}}})).empty());
    // a stops renewing: once its claim lapses, b takes the job (submitted: an orphan)...
    std::vector<core::job> taken;
    ASSERT_TRUE(test::eventually(
        [&] {
            taken = ok(b->claim(0, 5)).jobs;
            return !taken.empty();
        },
        std::chrono::seconds(10)));
    ASSERT_EQ(taken.size(), 1u);
    EXPECT_EQ(taken[0].request_id, "r-a");
    EXPECT_EQ(taken[0].node, "b");
    // ... and a's writes of it are refused, its history too.
    j.polls = 5;
    EXPECT_EQ(ok(a->save({{j, {{t0, "queued", "a's late note", std::nullopt}}}})),
              std::vector<std::string>{"j0"});
    auto renewed = ok(a->renew());
    EXPECT_TRUE(renewed.node_alive);
    EXPECT_TRUE(renewed.held.empty());
    for (auto& h : ok(b->history("j0")))
        EXPECT_NE(h.note, "a's late note");
    EXPECT_EQ(ok(b->get("j0"))->polls, 0);
    EXPECT_EQ(ok(b->get("j0"))->node, "b");
}

TEST_F(cluster_store_test, renewal_carries_cancel_requests_once_and_the_pause) {
    auto a = open();
    insert(*a, 2);
    ok(a->join(node("a")));
    ASSERT_EQ(ok(a->claim(2, 0)).jobs.size(), 2u);
    auto b = open();
    ok(b->join(node("b", milliseconds(30000), "h", 2)));
    ok(b->request_cancel("j1"));
    ok(b->set_meta("paused", "1"));
    auto r = ok(a->renew());
    EXPECT_EQ(r.held.size(), 2u);
    EXPECT_EQ(r.cancel_requested, std::vector<std::string>{"j1"});
    EXPECT_TRUE(r.paused);
    // Asked until the job has left pending: a cancel that could not be applied at once
    // (a write of the job on its way) is heard again.
    EXPECT_EQ(ok(a->renew()).cancel_requested, std::vector<std::string>{"j1"});
    auto j1 = ok(a->get("j1")).value();
    EXPECT_TRUE(ok(a->save({{j1, {}}})).empty()); // still pending
    EXPECT_EQ(ok(a->renew()).cancel_requested, std::vector<std::string>{"j1"});
    j1.state = job_state::cancelled;
    j1.finished_at = t0;
    EXPECT_TRUE(ok(a->save({{j1, {{t0, "cancelled", "cancelled", std::nullopt}}}})).empty());
    EXPECT_TRUE(ok(a->renew()).cancel_requested.empty()) << "cancelled: no longer asked";
}

TEST_F(cluster_store_test, a_job_caught_in_submitting_is_taken_over_only_after_the_grace) {
    // a holds two jobs and stops: j1 submitted (a request id), j0 caught in "submitting"
    // (a's POST may still be answered, and a may still record it). b takes j1 once a's
    // claims lapse, j0 only its grace later.
    auto a = open();
    insert(*a, 2);
    ok(a->join(node("a", milliseconds(400), "h", 1)));
    auto claimed_at = std::chrono::steady_clock::now(); // before: the claim lasts from then at most
    auto held = ok(a->claim(2, 0)).jobs;
    ASSERT_EQ(held.size(), 2u);
    for (auto& j : held) {
        j.state = j.id == "j0" ? job_state::submitting : job_state::queued;
        if (j.id == "j1")
            j.request_id = "r-1";
        EXPECT_TRUE(ok(a->save({{j, {}}})).empty());
    }
    auto b = open();
    auto bn = node("b", milliseconds(30000), "h", 2); // b's own claims last
    bn.submit_grace = milliseconds(2500);
    ok(b->join(bn));
    std::vector<core::job> first;
    ASSERT_TRUE(test::eventually(
        [&] {
            first = ok(b->claim(0, 5)).jobs;
            return !first.empty();
        },
        std::chrono::seconds(10)));
    ASSERT_EQ(first.size(), 1u);
    EXPECT_EQ(first[0].id, "j1");
    EXPECT_LT(std::chrono::steady_clock::now() - claimed_at, std::chrono::milliseconds(2500))
        << "the submitted job waited for the grace too";
    std::vector<core::job> second;
    ASSERT_TRUE(test::eventually(
        [&] {
            second = ok(b->claim(0, 5)).jobs;
            return !second.empty();
        },
        std::chrono::seconds(10)));
    ASSERT_EQ(second.size(), 1u);
    EXPECT_EQ(second[0].id, "j0");
    EXPECT_GE(std::chrono::steady_clock::now() - claimed_at, std::chrono::milliseconds(2900));
}

TEST_F(cluster_store_test, leaving_frees_the_claims_at_once_and_nodes_are_listed) {
    auto a = open();
    insert(*a, 4);
    ok(a->join(node("a")));
    ASSERT_EQ(ok(a->claim(4, 0)).jobs.size(), 4u);
    auto b = open();
    ok(b->join(node("b", milliseconds(30000), "h", 2)));
    auto listed = ok(b->nodes());
    ASSERT_EQ(listed.size(), 2u);
    EXPECT_EQ(listed[0].name, "a");
    EXPECT_TRUE(listed[0].live);
    EXPECT_EQ(listed[0].held, 4);
    EXPECT_EQ(listed[1].held, 0);
    ok(a->leave());
    EXPECT_EQ(ok(b->claim(10, 0)).jobs.size(), 4u) << "no wait for takeover_s";
    listed = ok(b->nodes());
    EXPECT_TRUE(listed[0].stopped);
    EXPECT_FALSE(listed[0].live);
    // A stopped name may be taken again at once.
    auto c = open();
    ok(c->join(node("a", milliseconds(30000), "other-host", 9)));
}

} // namespace

namespace {

TEST_F(cluster_store_test, the_shared_schedule_hands_out_slots_paced_at_the_smallest_live_rate) {
    auto a = open();
    auto an = node("a");
    an.requests_per_minute = 600; // 100 ms apart
    ok(a->join(an));
    auto b = open();
    auto bn = node("b", milliseconds(30000), "h", 2);
    bn.requests_per_minute = 1200;
    ok(b->join(bn));
    auto g1 = ok(a->reserve_slots(3, 600, std::nullopt, 0, 0.0));
    EXPECT_NEAR(g1.interval_ms, 100.0, 0.01) << "the smallest rate among live nodes";
    EXPECT_EQ(g1.count, 3);
    EXPECT_GE(g1.first, g1.db_now - milliseconds(1));
    auto g2 = ok(b->reserve_slots(2, 1200, std::nullopt, 0, 0.0));
    // b's slots come after a's three, on the same schedule.
    EXPECT_GE(g2.first, g1.first + milliseconds(299));
    EXPECT_FALSE(g2.allowed_rpm);
    // A 429 at b: everybody holds back, and the rate b lowered itself to is the cluster's.
    auto until = g2.db_now + milliseconds(5000);
    ok(b->report_block(until, 480.0));
    auto g3 = ok(a->reserve_slots(1, 600, std::nullopt, 0, 0.0));
    EXPECT_GE(g3.first, until);
    EXPECT_EQ(g3.blocked_until, until);
    ASSERT_TRUE(g3.allowed_rpm);
    EXPECT_EQ(*g3.allowed_rpm, 480.0);
    EXPECT_EQ(g3.epoch, 1);
    EXPECT_NEAR(g3.interval_ms, 125.0, 0.01);
    // A raise from a node that had not seen the decrease does not count; from one that had, it
    // does.
    ok(a->reserve_slots(1, 600, 590.0, 0, 0.0));
    EXPECT_EQ(*ok(b->reserve_slots(1, 1200, 480.0, 1, 0.0)).allowed_rpm, 480.0);
    ok(a->reserve_slots(1, 600, 540.0, 1, 0.0));
    EXPECT_EQ(*ok(b->reserve_slots(1, 1200, 480.0, 1, 0.0)).allowed_rpm, 540.0);
    ok(a->reserve_slots(1, 600, std::nullopt, 1, 0.0)); // a is at full rate again
    EXPECT_FALSE(ok(b->reserve_slots(1, 1200, std::nullopt, 1, 0.0)).allowed_rpm);
    EXPECT_EQ(ok(b->renew()).blocked_until, until);
    auto paced = ok(a->reserve_slots(1, 600, std::nullopt, 1, 0.01));
    EXPECT_NEAR(paced.interval_ms, 60000.0 / (600 * 0.99), 0.01) << "a margin below the rate";
}

TEST_F(cluster_store_test, a_rate_changed_by_a_reload_paces_the_cluster_from_the_next_heartbeat) {
    auto a = open();
    ok(a->join(node("a"))); // 60 a minute
    EXPECT_NEAR(ok(a->reserve_slots(1, 60, std::nullopt, 0, 0.0)).interval_ms, 1000.0, 0.01);
    a->set_node_settings(30, milliseconds(40000));
    ok(a->renew());
    EXPECT_EQ(ok(a->nodes()).at(0).requests_per_minute, 30);
    EXPECT_NEAR(ok(a->reserve_slots(1, 30, std::nullopt, 0, 0.0)).interval_ms, 2000.0, 0.01);
}

TEST_F(cluster_store_test, submitting_needs_the_margin_and_a_lapsed_claim_nobody_took_stays_ours) {
    auto a = open();
    insert(*a, 1);
    auto me = node("a", milliseconds(2000));
    me.submit_margin = milliseconds(1500);
    ok(a->join(me));
    auto j = ok(a->claim(1, 0)).jobs.at(0);
    // Fresh: a may write it, "submitting" too, but that only while the claim outlasts
    // the margin (the POST after it must end before another node may take the job).
    auto submitting = j;
    submitting.state = job_state::submitting;
    EXPECT_TRUE(ok(a->save({{submitting, {}}})).empty());
    EXPECT_TRUE(ok(a->save({{j, {}}})).empty()); // pending again
    ASSERT_TRUE(test::eventually(
        [&] {
            auto r = await(a->save({{submitting, {}}}));
            if (r)
                ok(a->save({{j, {}}})); // written: pending again, and try later
            return !r && r.error() == core::errc::store_busy;
        },
        std::chrono::seconds(5)))
        << "submitting is refused (not written, the job kept) once less than the margin is left";
    EXPECT_EQ(ok(a->get("j0"))->state, job_state::pending);
    // Lapsed, and no node has taken it: it still carries a's token. a's writes go on (a
    // write here may carry what a learned while cut off, a request id), and the
    // heartbeat renews it.
    auto other = open();
    ok(other->join(node("b", milliseconds(2000), "h", 2)));
    ASSERT_TRUE(test::eventually([&] { return ok(other->nodes()).at(0).held == 0; },
                                 std::chrono::seconds(5)));
    j.polls = 3;
    EXPECT_TRUE(ok(a->save({{j, {}}})).empty());
    EXPECT_EQ(ok(a->renew()).held, std::vector<std::string>{"j0"});
    EXPECT_TRUE(ok(other->claim(5, 5)).jobs.empty()) << "renewed: not free";
}

} // namespace
