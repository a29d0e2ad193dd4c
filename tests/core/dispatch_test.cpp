// The dispatch policy and the submission gate, sans I/O, under a manual clock:
// each decision of the dispatcher's loop, the probe rule of a 401/406 stop, the
// urgent-poll horizon and the rounding of wake-ups.
#include "core/dispatch_policy.hpp"
#include "core/submission_gate.hpp"

#include <array>
#include <gtest/gtest.h>
#include <map>
#include <random>
#include <variant>

namespace {

using namespace klingd::core;
using std::chrono::minutes;
using std::chrono::seconds;

const time_point t0{milliseconds(1'800'000'000'000)};

struct rig {
    dispatch_queue queue;
    rate_budget budget{60}; // one a second
    poll_planner planner{{1, 60, 3600}};
    submission_gate gate{seconds(60)};
    dispatch_policy policy;
    explicit rig(dispatch_limits l = {}) : policy(queue, budget, planner, gate, l) {}
};

template <typename T>
const T& as(const dispatch_action& a) {
    EXPECT_TRUE(std::holds_alternative<T>(a)) << "action index " << a.index();
    static const T none{};
    return std::holds_alternative<T>(a) ? std::get<T>(a) : none;
}

TEST(dispatch_policy, downloads_first_then_results_polls_and_submits_within_the_budget) {
    rig r;
    r.queue.schedule("s", work_kind::submit, t0);
    r.queue.schedule("p", work_kind::poll, t0, t0 + minutes(50));
    r.queue.schedule("f", work_kind::fetch_result, t0);
    r.queue.schedule("d", work_kind::download, t0);
    EXPECT_EQ(as<start_download>(r.policy.next_action(t0, {})).item.job_id, "d");
    EXPECT_EQ(as<send_request>(r.policy.next_action(t0, {})).item.job_id, "f");
    // One a second: the next send waits for its slot.
    auto sleep = as<sleep_until>(r.policy.next_action(t0, {}));
    ASSERT_TRUE(sleep.at);
    EXPECT_EQ(*sleep.at, t0 + seconds(1));
    EXPECT_EQ(as<send_request>(r.policy.next_action(t0 + seconds(1), {})).item.job_id, "p");
    EXPECT_EQ(as<send_request>(r.policy.next_action(t0 + seconds(2), {})).item.job_id, "s");
    EXPECT_FALSE(as<sleep_until>(r.policy.next_action(t0 + seconds(3), {})).at) << "nothing due";
}

TEST(dispatch_policy, limits_on_connections_downloads_and_jobs_in_flight_hold_work_back) {
    dispatch_limits l;
    l.max_requests = 1;
    l.max_downloads = 1;
    l.max_in_flight = 2;
    rig r(l);
    r.queue.schedule("d1", work_kind::download, t0);
    r.queue.schedule("d2", work_kind::download, t0);
    r.queue.schedule("p", work_kind::poll, t0, t0 + minutes(50));
    r.queue.schedule("s", work_kind::submit, t0);
    EXPECT_EQ(as<start_download>(r.policy.next_action(t0, {})).item.job_id, "d1");
    // One download and one request run: nothing more until they end.
    EXPECT_TRUE(std::holds_alternative<sleep_until>(r.policy.next_action(t0, {1, 1, 0})));
    // Two jobs in flight: the poll may go, the submit may not.
    EXPECT_EQ(as<send_request>(r.policy.next_action(t0, {0, 1, 2})).item.job_id, "p");
    EXPECT_FALSE(as<sleep_until>(r.policy.next_action(t0 + seconds(5), {0, 1, 2})).at);
    EXPECT_EQ(as<send_request>(r.policy.next_action(t0 + seconds(5), {0, 1, 1})).item.job_id, "s");
}

TEST(dispatch_policy, submits_awaiting_their_answer_are_capped_and_polls_take_the_rest) {
    dispatch_limits l;
    l.max_requests = 4;
    l.max_submits = 2;
    rig r(l);
    r.queue.schedule("s1", work_kind::submit, t0);
    r.queue.schedule("s2", work_kind::submit, t0);
    r.queue.schedule("p", work_kind::poll, t0, t0 + minutes(50));
    // Two submits on the wire: a third waits, the poll goes.
    EXPECT_EQ(as<send_request>(r.policy.next_action(t0, {2, 0, 2, 2})).item.job_id, "p");
    EXPECT_FALSE(as<sleep_until>(r.policy.next_action(t0 + seconds(1), {3, 0, 2, 2})).at)
        << "only submits are left, and none may go";
    // One answered: the next submit goes.
    auto s = as<send_request>(r.policy.next_action(t0 + seconds(1), {2, 0, 2, 1}));
    EXPECT_EQ(s.item.kind, work_kind::submit);
    EXPECT_EQ(automatic_submits(1), 1u);
    EXPECT_EQ(automatic_submits(12), 6u);
    EXPECT_EQ(automatic_submits(4), 2u);
    EXPECT_EQ(automatic_submits(7), 4u);
}

// Little's law with headroom, within bounds: a small account keeps today's caps, a
// large one gets what its budget needs.
TEST(dispatch_policy, automatic_caps_follow_the_budget_and_what_is_measured) {
    EXPECT_EQ(automatic_connections(60, 0.3), 4u) << "one a second needs no more";
    EXPECT_EQ(automatic_connections(1000, 0.3), 10u); // 16.7/s x 0.3 s x 2
    EXPECT_EQ(automatic_connections(1000, 1.0), 34u);
    EXPECT_EQ(automatic_connections(1e6, 30), 64u) << "at most 64";
    EXPECT_EQ(automatic_connections(0, 0), 4u);
    EXPECT_EQ(automatic_in_flight(30, 58), 50u) << "at least 50";
    EXPECT_EQ(automatic_in_flight(1000, 58), 484u); // 5.56 jobs/s x 58 s x 1.5
    EXPECT_EQ(automatic_in_flight(300, 223), 558u);
    EXPECT_EQ(automatic_in_flight(1e7, 3600), 10000u) << "at most 10,000";
}

TEST(dispatch_policy, polls_near_their_deadline_never_give_way_to_submits) {
    dispatch_limits l;
    l.max_poll_interval_s = 60; // urgent: deadline within 120 s
    rig r(l);
    for (int i = 0; i < 3; ++i)
        r.queue.schedule("s" + std::to_string(i), work_kind::submit, t0);
    for (int i = 0; i < 6; ++i)
        r.queue.schedule("p" + std::to_string(i), work_kind::poll, t0, t0 + seconds(100));
    std::string order;
    for (int i = 0; i < 9; ++i)
        order +=
            as<send_request>(r.policy.next_action(t0 + seconds(i), {})).item.job_id.substr(0, 1);
    EXPECT_EQ(order, "ppppppsss");
    // Far from their deadline, every fourth send is a submit.
    rig calm(l);
    for (int i = 0; i < 3; ++i)
        calm.queue.schedule("s" + std::to_string(i), work_kind::submit, t0);
    for (int i = 0; i < 6; ++i)
        calm.queue.schedule("p" + std::to_string(i), work_kind::poll, t0, t0 + minutes(50));
    order.clear();
    for (int i = 0; i < 9; ++i)
        order +=
            as<send_request>(calm.policy.next_action(t0 + seconds(i), {})).item.job_id.substr(0, 1);
    EXPECT_EQ(order, "pppspppss");
}

TEST(dispatch_policy, a_backlog_the_budget_needs_long_to_drain_is_scarcity_at_once) {
    rig r;
    for (int i = 0; i < 120; ++i)
        r.queue.schedule("s" + std::to_string(i), work_kind::submit, t0);
    as<send_request>(r.policy.next_action(t0, {}));
    // 119 waiting at 60/min take two minutes, many poll intervals: fully scarce.
    EXPECT_DOUBLE_EQ(r.planner.scarcity(), 1.0);
    rig quiet;
    quiet.queue.schedule("only", work_kind::submit, t0);
    as<send_request>(quiet.policy.next_action(t0, {}));
    EXPECT_DOUBLE_EQ(quiet.planner.scarcity(), 0.0);
}

TEST(dispatch_policy, wake_ups_are_rounded_up_to_the_tick) {
    dispatch_limits l;
    l.min_poll_interval_s = 0.25; // tick 5 ms
    rig r(l);
    EXPECT_EQ(wake_tick(0.25), milliseconds(5));
    EXPECT_EQ(wake_tick(0.001), milliseconds(1));
    EXPECT_EQ(wake_tick(60), milliseconds(10));
    EXPECT_EQ(r.policy.sleep_for(t0 + milliseconds(7), t0), milliseconds(10));
    EXPECT_EQ(r.policy.sleep_for(t0 + milliseconds(10), t0), milliseconds(10));
    EXPECT_EQ(r.policy.sleep_for(t0 - seconds(1), t0), milliseconds(5)) << "at least 1 ms, a tick";
}

TEST(submission_gate, a_401_stops_submits_and_one_probe_goes_per_interval) {
    submission_gate g(seconds(60));
    EXPECT_TRUE(g.allows(t0, 0, 10));
    auto line = g.on_signal(api_signal::unauthorized, "HTTP 401: bad key", t0, true);
    EXPECT_NE(line.find("the API key was refused (HTTP 401: bad key)"), std::string::npos) << line;
    EXPECT_EQ(g.on_signal(api_signal::unauthorized, "again", t0, false), "") << "logged once";
    EXPECT_FALSE(g.allows(t0 + seconds(59), 0, 10));
    EXPECT_TRUE(g.allows(t0 + seconds(60), 0, 10)) << "the probe is due";
    g.on_submit_sent(t0 + seconds(60));
    EXPECT_FALSE(g.allows(t0 + seconds(61), 0, 10)) << "one probe per interval";
    EXPECT_EQ(g.blocked_reason(), "submissions stopped: again; a probe is sent every 60s");
    // A poll that gets through proves the key: submissions resume.
    EXPECT_NE(g.on_signal(api_signal::accepted, "", t0 + seconds(62), false), "");
    EXPECT_TRUE(g.allows(t0 + seconds(62), 0, 10));
    EXPECT_EQ(g.blocked_reason(), "");
}

TEST(submission_gate, a_406_is_lifted_only_by_a_submit_and_a_new_key_probes_at_once) {
    submission_gate g(seconds(30));
    g.on_signal(api_signal::no_credits, "HTTP 406", t0, true);
    EXPECT_EQ(g.on_signal(api_signal::accepted, "", t0, false), "") << "a poll proves no credits";
    EXPECT_TRUE(g.stopped());
    g.probe_now(t0 + seconds(1));
    EXPECT_TRUE(g.allows(t0 + seconds(1), 0, 10));
    EXPECT_NE(g.on_signal(api_signal::accepted, "", t0 + seconds(2), true), "");
    EXPECT_FALSE(g.stopped());
}

TEST(submission_gate, pause_stopping_and_the_in_flight_cap_close_it) {
    submission_gate g(seconds(30));
    g.set_paused(true);
    EXPECT_FALSE(g.allows(t0, 0, 10));
    EXPECT_EQ(g.blocked_reason(), "submissions are paused (klingctl resume)");
    g.set_paused(false);
    EXPECT_FALSE(g.allows(t0, 10, 10));
    EXPECT_TRUE(g.allows(t0, 9, 10));
    g.set_stopping();
    EXPECT_FALSE(g.allows(t0, 0, 10));
}

// A long random run: every job is taken exactly once per schedule, in an order the
// policy allows, and the budget is never exceeded in any minute.
TEST(dispatch_policy, a_seeded_random_run_keeps_the_budget_and_loses_no_work) {
    std::mt19937 rng(7);
    rig r;
    std::map<std::string, int> scheduled, taken;
    time_point now = t0;
    std::vector<time_point> sends;
    for (int step = 0; step < 5000; ++step) {
        if (rng() % 3 == 0) {
            std::string id = "j" + std::to_string(rng() % 200);
            auto kind =
                std::array{work_kind::submit, work_kind::poll, work_kind::fetch_result}[rng() % 3];
            r.queue.schedule(id, kind, now + milliseconds(rng() % 5000), now + minutes(30));
            scheduled[id] = 1;
        }
        // Random loads: at the connection cap nothing may be sent.
        in_flight_counts f{rng() % 10, rng() % 5, rng() % 60};
        auto a = r.policy.next_action(now, f);
        if (auto* s = std::get_if<send_request>(&a)) {
            EXPECT_LT(f.requests, r.policy.limits().max_requests);
            if (s->item.kind == work_kind::submit) {
                EXPECT_LT(f.jobs, r.policy.limits().max_in_flight);
            }
            sends.push_back(now);
            taken[s->item.job_id] += 1;
            EXPECT_EQ(scheduled.erase(s->item.job_id), 1u) << s->item.job_id << " taken twice";
        } else if (std::holds_alternative<start_download>(a)) {
            ADD_FAILURE() << "no download was scheduled";
        } else {
            auto at = std::get<sleep_until>(a).at;
            now = at ? std::max(now + milliseconds(1), *at) : now + milliseconds(rng() % 2000 + 1);
        }
    }
    // Drain: everything still scheduled goes out, once.
    for (int guard = 0; guard < 100000; ++guard) {
        auto a = r.policy.next_action(now, {});
        if (auto* s = std::get_if<send_request>(&a)) {
            sends.push_back(now);
            taken[s->item.job_id] += 1;
            EXPECT_EQ(scheduled.erase(s->item.job_id), 1u) << s->item.job_id << " taken twice";
            continue;
        }
        auto at = std::get<sleep_until>(a).at;
        if (!at)
            break;
        now = std::max(now + milliseconds(1), *at);
    }
    EXPECT_TRUE(scheduled.empty()) << scheduled.size() << " jobs never went out";
    for (std::size_t i = 0; i + 61 < sends.size(); ++i)
        EXPECT_GE(sends[i + 61] - sends[i], minutes(1)) << "61 sends within a minute at " << i;
    EXPECT_GT(sends.size(), 100u);
}

} // namespace
