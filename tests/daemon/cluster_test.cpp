// Several klingd nodes on one real PostgreSQL server and one segmind-sim (one account):
// a node killed for good, the database stopped under the nodes, the database restarted
// under load. The emulator's statistics judge what was sent; every node lists every job.
#include "client/control_client.hpp"
#include "tests/daemon/daemon_env.hpp"
#include "tests/support/pg_server.hpp"
#include "tests/support/prometheus_text.hpp"

#include <csignal>
#include <filesystem>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <set>
#include <sstream>
#include <sys/stat.h>
#include <thread>

namespace {

using namespace klingd::test;
namespace json = boost::json;
using namespace std::chrono_literals;

bool final_state(const std::string& s) {
    return s == "completed" || s == "failed" || s == "expired" || s == "cancelled";
}

class cluster : public ::testing::Test {
protected:
    pg_server pg; // a private server: these tests stop it
    std::string db = pg.create_database();
    std::unique_ptr<sim_process> sim;
    std::vector<std::unique_ptr<daemon_env>> nodes;
    double scale = 0.02;

    void start_nodes(int n, std::vector<std::string> sim_args = {}, double rpm = 0) {
        std::vector<std::string> args{"--time-scale", fmt::format("{}", scale), "--api-key",
                                      "test-key-1"};
        args.insert(args.end(), sim_args.begin(), sim_args.end());
        sim = std::make_unique<sim_process>(args);
        for (int i = 0; i < n; ++i) {
            daemon_options o;
            o.scale = scale;
            o.requests_per_minute = rpm;
            o.postgresql = db;
            o.node = "n" + std::to_string(i);
            o.takeover_s = 3;
            o.shared_sim = sim.get();
            nodes.push_back(std::make_unique<daemon_env>(o));
            nodes.back()->start();
        }
    }
    // Drops count image jobs, spread over the nodes' spools; their ids.
    std::vector<std::string> drop_spread(const std::string& prefix, int count) {
        std::vector<std::string> ids;
        for (int i = 0; i < count; ++i) {
            auto id = fmt::format("{}{:03}", prefix, i);
            nodes[static_cast<std::size_t>(i) % nodes.size()]->drop(id + ".json", image_job(id));
            ids.push_back(id);
        }
        return ids;
    }
    std::map<std::string, json::value> jobs_seen_by(daemon_env& n) {
        std::map<std::string, json::value> out;
        for (auto& j : n.jobs())
            out[str(j, "id")] = j;
        return out;
    }
    // Jobs completed as node n sees them; -1 when it cannot answer now.
    int completed(daemon_env& n) {
        try {
            int done = 0;
            for (auto& j : n.jobs())
                done += str(j, "state") == "completed";
            return done;
        } catch (const std::runtime_error&) {
            return -1;
        }
    }
    // Gives node n another API key (a key file, read again on SIGHUP); returns once reloaded.
    void give_key(daemon_env& n, const std::string& key) {
        std::string key_file = n.dir() + "/api-key";
        write_file(key_file, key + "\n");
        ::chmod(key_file.c_str(), 0600);
        std::string cfg = read_file(n.config_path());
        if (cfg.find("api_key_file") == std::string::npos) {
            cfg.replace(cfg.find("[api]\n"), 6, "[api]\napi_key_file = \"" + key_file + "\"\n");
            write_file(n.config_path(), cfg);
        }
        auto reloads = [&] {
            auto log = n.log();
            std::size_t count = 0;
            for (auto at = log.find("reload:"); at != std::string::npos;
                 at = log.find("reload:", at + 1))
                ++count;
            return count;
        };
        auto before = reloads();
        n.signal(SIGHUP);
        ASSERT_TRUE(eventually([&] { return reloads() > before; }, 20s)) << n.log();
    }
    std::string logs() {
        std::string all;
        for (auto& n : nodes)
            all += "---- " + n->options().node + "\n" + n->log();
        return all;
    }
    // Every job ended; completed, or failed because a kill caught its submit in flight.
    void expect_all_done_and_none_paid_twice(daemon_env& seen_by,
                                             const std::vector<std::string>& ids,
                                             int min_completed) {
        auto all = jobs_seen_by(seen_by);
        int completed = 0;
        for (auto& id : ids) {
            ASSERT_TRUE(all.count(id)) << id << " is not listed";
            auto& j = all[id];
            if (str(j, "state") == "completed") {
                ++completed;
                // Written by the node that fetched it, into its own output folder.
                auto node = str(j, "node");
                auto owner = std::find_if(nodes.begin(), nodes.end(),
                                          [&](auto& n) { return n->options().node == node; });
                ASSERT_NE(owner, nodes.end()) << id << " finished by unknown node " << node;
                for (auto& p : j.at("outputs").as_array()) {
                    std::string path(p.as_string());
                    EXPECT_EQ(path.rfind((*owner)->output(), 0), 0u) << path;
                    EXPECT_TRUE(std::filesystem::exists(path)) << path;
                }
            } else {
                EXPECT_EQ(str(j, "state"), "failed") << id;
                EXPECT_NE(str(j, "error").find("resubmit_unknown = false"), std::string::npos)
                    << id << ": " << str(j, "error");
            }
        }
        EXPECT_GE(completed, min_completed);
        auto stats = nodes.front()->sim_stats();
        for (auto& [marker, n] : submissions_by_marker(stats))
            EXPECT_EQ(n, 1) << marker << " was submitted " << n << " times";
    }
};

TEST_F(cluster, three_nodes_one_killed_for_good_every_job_ends_and_none_is_submitted_twice) {
    // Runs of 4 s or so: n1 surely holds submitted jobs when it dies.
    start_nodes(3, {"--median", "kling-o1=200"});
    auto ids = drop_spread("c", 60);
    // Once the cluster is well under way, kill the node (n1 or n2) that holds the most
    // submitted, unfinished jobs: the victim.
    std::string victim;
    std::set<std::string> held_by_victim;
    ASSERT_TRUE(eventually(
        [&] {
            if (completed(*nodes[0]) < 10)
                return false;
            std::map<std::string, std::set<std::string>> held;
            for (auto& [id, j] : jobs_seen_by(*nodes[0]))
                if (!final_state(str(j, "state")) && !str(j, "node").empty())
                    held[str(j, "node")].insert(id);
            victim = held["n1"].size() >= held["n2"].size() ? "n1" : "n2";
            held_by_victim = held[victim];
            return !held_by_victim.empty();
        },
        60s))
        << logs();
    auto& dead = victim == "n1" ? nodes[1] : nodes[2];
    auto& survivor = victim == "n1" ? nodes[2] : nodes[1];
    dead->kill9();
    ASSERT_TRUE(nodes[0]->wait_terminal(ids, 120s)) << logs();
    expect_all_done_and_none_paid_twice(*nodes[0], ids, 55);
    // Both survivors list every job, and see the dead node lose its claims.
    EXPECT_EQ(jobs_seen_by(*survivor).size(), 60u);
    EXPECT_EQ(jobs_seen_by(*nodes[0]).size(), 60u);
    std::map<std::string, json::value> by_name;
    auto read_nodes = [&] {
        auto listed = survivor->api("GET", "/v1/nodes");
        EXPECT_EQ(listed.status, 200) << listed.text;
        by_name.clear();
        if (listed.status == 200)
            for (auto& n : listed.body.at("nodes").as_array())
                by_name[str(n, "name")] = n;
    };
    ASSERT_TRUE(eventually(
        [&] {
            read_nodes();
            return str(by_name[victim], "live") == "false";
        },
        10s));
    ASSERT_EQ(by_name.size(), 3u);
    EXPECT_EQ(str(by_name[victim], "jobs_held"), "0");
    EXPECT_EQ(str(by_name["n0"], "live"), "true");
    EXPECT_EQ(str(by_name[survivor->options().node], "this"), "true");
    // klingctl nodes says the same, in a table.
    child_process ctl(KLINGCTL_PATH, {"--socket", survivor->socket(), "nodes"});
    ASSERT_EQ(ctl.wait(20s), 0) << ctl.stderr_text();
    auto table = ctl.stdout_text();
    EXPECT_NE(table.find(victim + " "), std::string::npos) << table;
    EXPECT_NE(table.find("gone"), std::string::npos) << table;
    EXPECT_NE(table.find("(this node)"), std::string::npos) << table;
    // The jobs the victim held when it died were carried on by the others.
    auto after = jobs_seen_by(*nodes[0]);
    for (auto& id : held_by_victim) {
        auto& j = after[id];
        EXPECT_TRUE(str(j, "node") == "n0" || str(j, "node") == survivor->options().node)
            << id << " ended " << str(j, "state") << " on " << str(j, "node");
    }
    // /metrics: the nodes by state are the cluster's; the jobs taken over are counted by
    // the node that took them (the victim held some unfinished ones a moment before).
    double taken_over = 0;
    for (auto* n : {nodes[0].get(), survivor.get()}) {
        auto m = n->api("GET", "/metrics");
        ASSERT_EQ(m.status, 200);
        expect_prometheus(m.text);
        EXPECT_EQ(metric_value(m.text, "klingd_cluster_nodes{state=\"live\"}"), 2) << m.text;
        EXPECT_EQ(metric_value(m.text, "klingd_cluster_nodes{state=\"gone\"}"), 1) << m.text;
        EXPECT_EQ(metric_value(m.text, "klingd_cluster_degraded"), 0) << m.text;
        EXPECT_EQ(metric_value(m.text, "klingd_cluster_jobs_held"), 0) << m.text;
        EXPECT_GT(metric_value(m.text, "klingd_cluster_claim_seconds_left").value_or(0), 0);
        taken_over += metric_value(m.text, "klingd_cluster_jobs_taken_over_total").value_or(-1e9);
        // A cluster node exports every family: promtool passes it, and the dashboard and
        // the alerting rules use nothing else.
        expect_promtool_clean(m.text);
        expect_ops_kit_covered_by(m.text);
    }
    EXPECT_GT(taken_over, 0);
    EXPECT_EQ(nodes[0]->stop(), 0);
    EXPECT_EQ(survivor->stop(), 0);
}

TEST_F(cluster, three_nodes_share_one_account_budget_and_together_stay_within_it) {
    // The account allows 60 requests per API minute (3 s here); each node is configured
    // with the whole of it. Alone, each would send at that rate: three times the budget.
    scale = 0.05;
    start_nodes(3, {"--rpm", "60"}, 60 / scale);
    auto began = std::chrono::steady_clock::now();
    auto ids = drop_spread("b", 90);
    ASSERT_TRUE(nodes[0]->wait_terminal(ids, 240s)) << logs();
    double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
    for (auto& [id, j] : jobs_seen_by(*nodes[0]))
        EXPECT_EQ(str(j, "state"), "completed") << id << ": " << str(j, "error");
    auto stats = nodes[0]->sim_stats(false);
    auto requests = api_requests(stats);
    auto limited = answers_429(stats);
    double share = static_cast<double>(limited) / static_cast<double>(requests);
    std::printf("three nodes, one budget: %llu API requests for 90 jobs, %llu answered 429 "
                "(%.2f%%)\n",
                static_cast<unsigned long long>(requests), static_cast<unsigned long long>(limited),
                share * 100);
    EXPECT_LT(share, 0.01);
    EXPECT_LE(static_cast<double>(requests) / 90, 3.6);
    // Every node sent some of them (its own counter): the budget was shared, not taken by one.
    for (auto& n : nodes) {
        auto m = n->api("GET", "/metrics");
        ASSERT_EQ(m.status, 200);
        double sent = 0;
        std::istringstream lines(m.text);
        for (std::string line; std::getline(lines, line);)
            if (line.rfind("klingd_api_requests_total{", 0) == 0)
                sent += std::stod(line.substr(line.rfind(' ') + 1));
        EXPECT_GT(sent, 0) << n->options().node;
    }
    // What sharing cost: the budget row's updates (reservations and 429 reports) per API
    // request, and the pace reached against the budget (20 requests a second here), over
    // the whole run, the last jobs' run time included. Read once the nodes have stopped.
    for (auto& n : nodes)
        EXPECT_EQ(n->stop(), 0);
    auto name = db.substr(db.rfind('=') + 1);
    auto updates = std::stod(
        pg.query_value(name, "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'budget'"));
    std::printf("sharing: %.0f budget updates for %llu requests (%.2f per request); %.1f s for "
                "90 jobs: %.1f requests/s against a budget of %.1f\n",
                updates, static_cast<unsigned long long>(requests),
                updates / static_cast<double>(requests), took, static_cast<double>(requests) / took,
                60 / (60 * scale));
}

// One node's key is refused (401: a key rotated, that host not reloaded yet): it keeps
// one pending job as its probe and lets the other node carry every other job on, those
// it had submitted before the key changed included; every job but the probe completes,
// and the probe too once the node is given the right key.
TEST_F(cluster, a_node_whose_key_is_refused_lets_the_others_carry_its_jobs_on) {
    start_nodes(2);
    auto ids = drop_spread("k", 6);
    ASSERT_TRUE(eventually([&] { return completed(*nodes[0]) >= 1; }, 60s)) << logs();
    auto& bad = *nodes[1];
    // The emulator now wants another key; n0 is given it, n1 not.
    nodes[0]->sim_config(R"({"api_key":"test-key-2"})");
    give_key(*nodes[0], "test-key-2");
    // n0 may claim a batch whole before n1's heartbeat comes round: more, until n1 has
    // sent one with its old key and been refused. (When n1 holds nothing but the job it
    // probes the key with, it has nothing to let go and says only that it stopped.)
    auto refused = [&] {
        return bad.log().find("submissions stopped: the API key was refused") != std::string::npos;
    };
    for (int batch = 0; batch < 10 && !refused(); ++batch) {
        auto more = drop_spread(fmt::format("m{}x", batch), 4);
        ids.insert(ids.end(), more.begin(), more.end());
        eventually(refused, 5s);
    }
    ASSERT_TRUE(refused()) << logs();
    // All but at most one job (n1's probe) end, completed, on n0.
    std::string probe;
    ASSERT_TRUE(eventually(
        [&] {
            int open = 0;
            probe.clear();
            for (auto& [id, j] : jobs_seen_by(*nodes[0]))
                if (!final_state(str(j, "state"))) {
                    ++open;
                    probe = id;
                }
            return open <= 1;
        },
        120s))
        << logs();
    if (!probe.empty()) { // pending (node null): held by n1, the one job it holds
        auto listed = nodes[0]->api("GET", "/v1/nodes");
        ASSERT_EQ(listed.status, 200);
        for (auto& n : listed.body.at("nodes").as_array()) {
            if (str(n, "name") == "n1") {
                EXPECT_EQ(str(n, "jobs_held"), "1") << listed.text;
            }
        }
    }
    // Given the key, n1 sends its probe: everything completes, nothing paid twice.
    give_key(bad, "test-key-2");
    ASSERT_TRUE(nodes[0]->wait_terminal(ids, 120s)) << logs();
    for (auto& [id, j] : jobs_seen_by(*nodes[0]))
        EXPECT_EQ(str(j, "state"), "completed") << id << ": " << str(j, "error");
    for (auto& [marker, n] : submissions_by_marker(nodes[0]->sim_stats()))
        EXPECT_EQ(n, 1) << marker << " was submitted " << n << " times";
}

TEST_F(cluster, a_node_stopping_with_submits_in_flight_keeps_its_claims_until_they_are_answered) {
    // Every answer takes 4 s, longer than the takeover time (3 s): a node that stopped
    // its heartbeat while it waits for its POSTs would see them taken over and failed.
    start_nodes(2, {"--slow-rate", "1", "--slow-s", "4"});
    auto ids = drop_spread("g", 6);
    std::string stopping; // the node with a submit in flight
    ASSERT_TRUE(eventually(
        [&] {
            for (auto& [id, j] : jobs_seen_by(*nodes[0]))
                if (str(j, "state") == "submitting" && !str(j, "node").empty()) {
                    stopping = str(j, "node");
                    return true;
                }
            return false;
        },
        30s))
        << logs();
    auto& gone = stopping == "n0" ? nodes[0] : nodes[1];
    auto& stays = stopping == "n0" ? nodes[1] : nodes[0];
    gone->signal(SIGTERM);
    ASSERT_TRUE(eventually([&] { return !gone->running(); }, 30s)) << logs();
    ASSERT_TRUE(stays->wait_terminal(ids, 120s)) << logs();
    for (auto& [id, j] : jobs_seen_by(*stays))
        EXPECT_EQ(str(j, "state"), "completed") << id << ": " << str(j, "error");
    for (auto& [marker, n] : submissions_by_marker(stays->sim_stats()))
        EXPECT_EQ(n, 1) << marker << " was submitted " << n << " times";
}

TEST_F(cluster, nodes_cut_off_from_the_database_send_nothing_and_recover_when_it_is_back) {
    start_nodes(2);
    auto ids = drop_spread("d", 30);
    ASSERT_TRUE(eventually([&] { return completed(*nodes[0]) >= 5; }, 60s)) << logs();
    pg.stop();
    // Both say so, from memory, while the database is gone.
    for (auto& n : nodes)
        ASSERT_TRUE(eventually(
            [&] {
                auto h = n->api("GET", "/v1/health");
                return h.status == 503 && str(h.body, "status") == "degraded" &&
                       !str(h.body, "reason").empty();
            },
            15s))
            << n->options().node << "\n"
            << logs();
    // /metrics still answers, with this node's counters, and says what is missing.
    auto m = nodes[1]->api("GET", "/metrics");
    ASSERT_EQ(m.status, 200) << m.text;
    expect_prometheus(m.text);
    EXPECT_EQ(metric_value(m.text, "klingd_cluster_degraded"), 1) << m.text;
    EXPECT_EQ(metric_value(m.text, "klingd_database_up"), 0) << m.text;
    EXPECT_EQ(m.text.find("klingd_jobs{"), std::string::npos) << m.text;
    EXPECT_EQ(m.text.find("klingd_cluster_nodes{"), std::string::npos) << m.text;
    EXPECT_TRUE(metric_value(m.text, "klingd_polls_total")) << m.text;
    // Nothing is sent that could not be recorded: the emulator hears nothing more.
    auto before = api_requests(nodes[0]->sim_stats(false));
    std::this_thread::sleep_for(2s); // a window in which nothing may happen
    auto after = api_requests(nodes[0]->sim_stats(false));
    EXPECT_EQ(after, before) << "requests sent while cut off from the database";
    pg.start();
    for (auto& n : nodes)
        ASSERT_TRUE(eventually([&] { return n->api("GET", "/v1/health").status == 200; }, 20s))
            << logs();
    ASSERT_TRUE(nodes[0]->wait_terminal(ids, 120s)) << logs();
    expect_all_done_and_none_paid_twice(*nodes[1], ids, 25);
}

// A database that takes connections but never answers (frozen: every server process
// stopped) for longer than a heartbeat's deadline, while jobs arrive: the event loop never
// waits on it (/v1/health answers within 100 ms throughout, 503 "degraded" once the
// claims are about to lapse), nothing is sent meanwhile, and once it answers again every
// job completes, submitted once.
TEST_F(cluster, a_frozen_database_never_holds_up_the_event_loop) {
    start_nodes(1);
    auto& n = *nodes[0];
    auto ids = drop_spread("f", 8);
    ASSERT_TRUE(eventually([&] { return completed(n) >= 2; }, 60s)) << logs();
    pg.freeze();
    auto frozen_at = std::chrono::steady_clock::now();
    auto more = drop_spread("g", 4); // intake wants the database too
    ids.insert(ids.end(), more.begin(), more.end());
    klingd::client::control_client socket(n.socket(), 5s);
    int probes = 0, slow = 0, degraded = 0;
    double worst_ms = 0;
    std::optional<std::uint64_t> sent_when_degraded;
    std::optional<std::chrono::steady_clock::time_point> degraded_at;
    // 12 s: past the 10 s after which a heartbeat that gets no answer fails.
    while (std::chrono::steady_clock::now() - frozen_at < 12s) {
        auto t0 = std::chrono::steady_clock::now();
        auto r = socket.call(boost::beast::http::verb::get, "/v1/health");
        double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                        .count();
        ASSERT_TRUE(r) << r.error().message();
        ASSERT_TRUE(r->status == 200 || r->status == 503) << r->text;
        if (r->status == 503) {
            ++degraded;
            if (!degraded_at)
                degraded_at = t0;
            // Counted half a second on: a request sent just before may still be on its way.
            else if (!sent_when_degraded && t0 - *degraded_at > 500ms)
                sent_when_degraded = api_requests(n.sim_stats(false));
        }
        worst_ms = std::max(worst_ms, ms);
        slow += ms > 100;
        ++probes;
        std::this_thread::sleep_for(20ms); // the probes' pace, not a synchronisation
    }
    EXPECT_GT(degraded, 0) << "the node never said it was cut off\n" << logs();
    // Every answer within 100 ms but for a rare hiccup of a loaded machine.
    EXPECT_LE(slow, probes / 100) << "over " << probes << " probes";
    EXPECT_LT(worst_ms, 1000.0) << "over " << probes << " probes";
    // Once degraded, nothing more went out.
    ASSERT_TRUE(sent_when_degraded) << logs();
    EXPECT_EQ(api_requests(n.sim_stats(false)), *sent_when_degraded);
    // A scrape answers at once, and says so (it does not wait on the frozen database).
    auto t0 = std::chrono::steady_clock::now();
    auto m = n.api("GET", "/metrics");
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);
    EXPECT_EQ(m.status, 200);
    EXPECT_EQ(metric_value(m.text, "klingd_cluster_degraded"), 1) << m.text;
    EXPECT_EQ(metric_value(m.text, "klingd_database_up"), 0) << m.text;
    pg.thaw();
    ASSERT_TRUE(eventually([&] { return n.api("GET", "/v1/health").status == 200; }, 30s))
        << logs();
    ASSERT_TRUE(n.wait_terminal(ids, 120s)) << logs();
    expect_all_done_and_none_paid_twice(n, ids, 10);
    EXPECT_EQ(n.stop(), 0);
}

TEST_F(cluster, a_database_restarted_under_load_loses_nothing_and_pays_nothing_twice) {
    start_nodes(2);
    auto ids = drop_spread("r", 40);
    for (int round = 0; round < 2; ++round) {
        ASSERT_TRUE(eventually([&] { return completed(*nodes[0]) >= 5 + 10 * round; }, 60s))
            << logs();
        pg.kill(); // as in a crash of the server
        pg.start();
    }
    ASSERT_TRUE(nodes[0]->wait_terminal(ids, 120s)) << logs();
    expect_all_done_and_none_paid_twice(*nodes[0], ids, 36);
    EXPECT_EQ(nodes[0]->stop(), 0);
    EXPECT_EQ(nodes[1]->stop(), 0);
}

TEST_F(cluster, watchers_of_one_node_see_what_the_other_nodes_record) {
    start_nodes(2);
    child_process watch(KLINGCTL_PATH, {"--socket", nodes[0]->socket(), "watch"});
    // Once the watcher hears of a first job, it is subscribed; the second job's intake at
    // n1 reaches it only through the database (n0 publishes only its own intake).
    nodes[1]->drop("w1.json", image_job("w1"));
    ASSERT_TRUE(
        eventually([&] { return watch.stdout_text().find("w1") != std::string::npos; }, 30s))
        << watch.stderr_text() << logs();
    nodes[1]->drop("w2.json", image_job("w2"));
    // The lines about w2, each once.
    auto lines_of_w2 = [&] {
        std::vector<std::string> lines;
        std::istringstream in(watch.stdout_text());
        for (std::string line; std::getline(in, line);)
            if (line.find(" w2 ") != std::string::npos)
                lines.push_back(line);
        return lines;
    };
    ASSERT_TRUE(eventually(
        [&] {
            auto lines = lines_of_w2();
            return !lines.empty() && lines.back().find("completed") != std::string::npos;
        },
        30s))
        << watch.stdout_text() << logs();
    auto lines = lines_of_w2();
    EXPECT_NE(lines.front().find("accepted from spool:w2.json"), std::string::npos);
    std::set<std::string> distinct(lines.begin(), lines.end());
    EXPECT_EQ(distinct.size(), lines.size()) << watch.stdout_text() << "\n"
                                             << nodes[0]->api("GET", "/v1/jobs/w2").text;
    watch.kill_hard();
}

TEST_F(cluster, a_single_hosts_database_is_imported_once_and_its_jobs_go_on_in_the_cluster) {
    sim = std::make_unique<sim_process>(std::vector<std::string>{
        "--time-scale", fmt::format("{}", scale), "--api-key", "test-key-1"});
    // A single host (SQLite) finishes six jobs, of which it prunes three (tombstones),
    // then keeps three pending (paused).
    daemon_options single;
    single.scale = scale;
    single.shared_sim = sim.get();
    daemon_env host(single);
    host.start();
    std::vector<std::string> ids;
    for (int i = 0; i < 6; ++i) {
        ids.push_back(fmt::format("s{}", i));
        host.drop(ids.back() + ".json", image_job(ids.back()));
        if (i == 2) {
            ASSERT_TRUE(host.wait_terminal(ids, 60s)) << host.log();
            auto purged = host.api("POST", "/v1/purge?older_than_days=0");
            ASSERT_EQ(purged.status, 200) << purged.text;
            ASSERT_EQ(purged.body.at("jobs_pruned").to_number<int>(), 3) << purged.text;
        }
    }
    std::vector<std::string> pruned(ids.begin(), ids.begin() + 3);
    std::vector<std::string> kept(ids.begin() + 3, ids.end());
    ASSERT_TRUE(host.wait_terminal(kept, 60s)) << host.log();
    ASSERT_EQ(host.api("POST", "/v1/pause").status, 200);
    for (int i = 6; i < 9; ++i) {
        ids.push_back(fmt::format("s{}", i));
        host.drop(ids.back() + ".json", image_job(ids.back()));
    }
    ASSERT_TRUE(eventually([&] { return host.state("s8") == "pending"; }, 20s));

    daemon_options o;
    o.scale = scale;
    o.postgresql = db;
    o.node = "n0";
    o.shared_sim = sim.get();
    nodes.push_back(std::make_unique<daemon_env>(o));
    auto& node = *nodes.back();
    auto import = [&] {
        child_process p(
            KLINGD_PATH,
            {"--import-sqlite", host.dir() + "/klingd.db", "--config", node.config_path()},
            {{"SEGMIND_API_KEY", "test-key-1"}});
        auto rc = p.wait(60s);
        return std::make_pair(rc.value_or(-1), p.stdout_text() + p.stderr_text());
    };
    // Not while the single host runs on the file (both would submit its pending jobs);
    // nor may a second klingd run on it.
    auto [rc0, out0] = import();
    EXPECT_EQ(rc0, 1) << out0;
    EXPECT_NE(out0.find("stop the single-host klingd"), std::string::npos) << out0;
    {
        child_process second(KLINGD_PATH, {"--config", host.config_path()},
                             {{"SEGMIND_API_KEY", "test-key-1"}});
        auto rc = second.wait(30s);
        EXPECT_EQ(rc.value_or(-1), 1) << second.stderr_text();
        EXPECT_NE(second.stderr_text().find("is another klingd running on it?"), std::string::npos)
            << second.stderr_text();
    }
    EXPECT_EQ(host.state("s8"), "pending");
    ASSERT_EQ(host.stop(), 0);

    // Into the cluster's database, twice: the second copies nothing.
    auto [rc1, out1] = import();
    EXPECT_EQ(rc1, 0) << out1;
    EXPECT_NE(out1.find("imported 9 of the 9 jobs"), std::string::npos) << out1;
    auto [rc2, out2] = import();
    EXPECT_EQ(rc2, 0) << out2;
    EXPECT_NE(out2.find("imported 0 of the 9 jobs"), std::string::npos) << out2;
    EXPECT_NE(out2.find("9 were there already"), std::string::npos)
        << out2 << "(the tombstones too: the same content's hash)";
    EXPECT_EQ(out2.find("conflict"), std::string::npos) << out2;

    // The single host refuses to run on the imported file again (both would submit them).
    {
        child_process again(KLINGD_PATH, {"--config", host.config_path()},
                            {{"SEGMIND_API_KEY", "test-key-1"}});
        EXPECT_EQ(again.wait(20s), 1);
        EXPECT_NE(again.stderr_text().find("imported into a cluster"), std::string::npos)
            << again.stderr_text();
    }
    // The node lists them all, with their history; the pending three are submitted now.
    node.start();
    ASSERT_TRUE(node.wait_terminal(kept, 60s)) << node.log();
    for (auto& id : kept)
        EXPECT_EQ(node.state(id), "completed") << id;
    // The pruned ones came as tombstones: absent from answers, their ids still taken.
    for (auto& id : pruned)
        EXPECT_EQ(node.api("GET", "/v1/jobs/" + id).status, 404) << id;
    auto other = image_job("s0");
    other.replace(other.find("merge"), 5, "blend");
    auto refused = node.api("POST", "/v1/jobs?id=s0", other);
    EXPECT_EQ(refused.status, 409) << refused.text;
    // The history came along: accepted and completed on the single host.
    auto shown = node.api("GET", "/v1/jobs/s3");
    ASSERT_EQ(shown.status, 200);
    std::string notes;
    for (auto& h : shown.body.at("history").as_array())
        notes += str(h, "state") + ": " + str(h, "note") + "\n";
    EXPECT_NE(notes.find("pending: accepted from spool:s3.json"), std::string::npos) << notes;
    EXPECT_NE(notes.find("completed"), std::string::npos) << notes;
    for (auto& [marker, n] : submissions_by_marker(node.sim_stats()))
        EXPECT_EQ(n, 1) << marker << " was submitted " << n << " times";
    EXPECT_EQ(submissions_by_marker(node.sim_stats()).size(), 9u);
    EXPECT_EQ(node.stop(), 0);
}

} // namespace
