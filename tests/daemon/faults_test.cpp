// Faults from outside klingd: a flaky API with kill -9 on top (the soak test), a full
// output disk, a database that is locked, read-only, damaged or old, a spool folder
// that disappears, and networks that fail in each way they can. Each test says what
// must hold: nothing lost, nothing submitted twice, a reason a person can read, and a
// daemon that keeps answering.
#include "client/control_client.hpp"
#include "tests/daemon/daemon_env.hpp"

#include <arpa/inet.h>
#include <atomic>
#include <cstdlib>
#include <fcntl.h>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <random>
#include <sqlite3.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>

namespace {

using namespace klingd::test;
namespace json = boost::json;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

// Resident memory of a process in KiB, from /proc (0 when it is gone).
long rss_kib(int pid) {
    std::ifstream f(fmt::format("/proc/{}/status", pid));
    std::string line;
    while (std::getline(f, line))
        if (line.rfind("VmRSS:", 0) == 0)
            return std::atol(line.c_str() + 6);
    return 0;
}

// Every job terminal; each completed one byte-exact, each failed one only because a
// kill or a reset left its submit's outcome unknown; no marker submitted twice.
void expect_nothing_lost_nothing_twice(daemon_env& env, const std::vector<std::string>& ids) {
    auto all = env.jobs();
    EXPECT_EQ(all.size(), ids.size());
    std::map<std::string, int> by_state;
    for (auto& j : all) {
        std::string id = str(j, "id"), state = str(j, "state");
        ++by_state[state];
        if (state == "completed") {
            expect_completed_with_exact_media(env, id);
        } else {
            EXPECT_EQ(state, "failed") << id;
            EXPECT_NE(str(j, "error").find("resubmit_unknown = false"), std::string::npos)
                << id << ": " << str(j, "error");
        }
    }
    for (auto& [marker, n] : submissions_by_marker(env.sim_stats()))
        EXPECT_EQ(n, 1) << marker << " was submitted " << n << " times";
    std::string summary;
    for (auto& [s, n] : by_state)
        summary += fmt::format(" {} {}", n, s);
    std::cout << "[ figures  ] jobs:" << summary << "\n";
}

// Failed jobs by why their submit's outcome is unknown: klingd killed while the POST
// was in flight, or the answer lost on the network (a reset, a cut body).
struct unknown_outcomes {
    int killed = 0;
    int lost_answer = 0;
};

unknown_outcomes count_unknown_outcomes(daemon_env& env) {
    unknown_outcomes u;
    for (auto& j : env.jobs()) {
        if (str(j, "state") != "failed")
            continue;
        std::string e = str(j, "error");
        if (e.find("klingd stopped while") != std::string::npos)
            ++u.killed;
        else if (e.find("answer to the submit was lost") != std::string::npos)
            ++u.lost_answer;
    }
    return u;
}

// The short form runs in the default test run; scripts/soak.sh runs the long one
// (KLINGD_SOAK_JOBS=10000 KLINGD_SOAK_KILLS=100).
TEST(soak, a_flaky_api_and_repeated_kill_9_lose_nothing_and_submit_nothing_twice) {
    const int jobs = env_int("KLINGD_SOAK_JOBS", 150);
    const int kills = env_int("KLINGD_SOAK_KILLS", 5);
    daemon_options o;
    o.max_in_flight = 100;
    o.sim_args = {"--error-rate", "0.10", "--reset-rate", "0.02", "--truncate-rate",     "0.02",
                  "--slow-rate",  "0.02", "--slow-s",     "0.3",  "--media-bytes-video", "262144"};
    daemon_env env(o);
    env.start();
    std::vector<std::string> ids;
    for (int i = 0; i < jobs; ++i) {
        std::string id = fmt::format("s{:05}", i);
        env.drop(id + ".json", i % 4 == 3 ? video_job(id) : image_job(id));
        ids.push_back(id);
    }
    // The kills fall at random moments of the expected run time.
    std::mt19937 rng(static_cast<unsigned>(env_int("KLINGD_SOAK_SEED", 2026)));
    const auto expected = std::chrono::milliseconds(1500 + jobs * 12);
    std::vector<std::chrono::milliseconds> at;
    for (int k = 0; k < kills; ++k)
        at.push_back(std::chrono::milliseconds(rng() % expected.count()));
    std::sort(at.begin(), at.end());

    struct sample {
        double t;
        long kib;
    };
    std::vector<sample> rss;
    auto t0 = std::chrono::steady_clock::now();
    auto since = [&] {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0);
    };
    auto started = t0;
    auto sample_rss = [&] {
        // A process that has run a second has loaded its jobs; before that it is still growing.
        if (std::chrono::steady_clock::now() - started > 1s)
            if (long k = rss_kib(env.pid()); k > 0)
                rss.push_back({since().count(), k});
    };
    for (auto when : at) {
        while (since() < when) {
            sample_rss();
            std::this_thread::sleep_for(100ms);
        }
        env.kill9();
        env.start();
        started = std::chrono::steady_clock::now();
    }
    bool done = false;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120 + jobs / 5);
    while (!done && std::chrono::steady_clock::now() < deadline) {
        sample_rss();
        done = env.wait_terminal(ids, 1s);
    }
    ASSERT_TRUE(done) << env.log().substr(0, 20000);
    EXPECT_TRUE(env.running()) << "klingd died on its own";
    env.sim_config(R"({"error_rate":0,"reset_rate":0,"truncate_rate":0,"slow_rate":0})");
    expect_nothing_lost_nothing_twice(env, ids);

    // Memory: the last quarter of the samples against the first.
    ASSERT_GE(rss.size(), 8u);
    auto mean = [&](std::size_t from, std::size_t to) {
        double sum = 0;
        for (std::size_t i = from; i < to; ++i)
            sum += static_cast<double>(rss[i].kib);
        return sum / static_cast<double>(to - from) / 1024;
    };
    std::size_t q = rss.size() / 4;
    double first = mean(0, q), last = mean(rss.size() - q, rss.size());
    std::cout << fmt::format("[ figures  ] {} jobs, {} kills, {:.0f} s; resident memory: first "
                             "quarter {:.1f} MiB, last quarter {:.1f} MiB ({} samples)\n",
                             jobs, kills, rss.back().t, first, last, rss.size());
#if defined(__SANITIZE_ADDRESS__)
    std::cout << "[ note     ] AddressSanitizer's quarantine grows by design; memory not judged\n";
#else
    EXPECT_LE(last, first * 1.15 + 2) << "memory grew over the run";
#endif
    auto stats = env.sim_stats(false);
    auto submissions = stats.at("submissions").as_int64();
    std::cout << fmt::format("[ figures  ] sim: {} submissions, {} API requests\n", submissions,
                             api_requests(stats));
    auto unknown = count_unknown_outcomes(env);
    std::cout << fmt::format(
        "[ figures  ] unknown submit outcomes: {} by a kill ({:.2f} per kill), {} by a lost "
        "answer ({:.1f} per 1,000 submits)\n",
        unknown.killed, kills ? double(unknown.killed) / kills : 0.0, unknown.lost_answer,
        submissions ? 1000.0 * unknown.lost_answer / double(submissions) : 0.0);
    EXPECT_EQ(env.stop(), 0);
}

// A small file system of its own for the output folder, unmounted at the end.
class tmpfs_mount {
public:
    tmpfs_mount(const std::string& dir, std::size_t bytes) : dir_(dir) {
        fs::create_directories(dir);
        ok_ = ::mount("tmpfs", dir.c_str(), "tmpfs", 0,
                      fmt::format("size={},mode=0755", bytes).c_str()) == 0;
        error_ = ok_ ? "" : std::strerror(errno);
    }
    ~tmpfs_mount() {
        if (ok_)
            ::umount2(dir_.c_str(), MNT_DETACH);
    }
    bool ok() const { return ok_; }
    const std::string& error() const { return error_; }

private:
    std::string dir_;
    bool ok_ = false;
    std::string error_;
};

TEST(full_disk, downloads_wait_for_space_keep_the_result_and_nothing_completes_without_files) {
    daemon_options o;
    o.sim_args = {"--media-bytes-image", "200000"};
    daemon_env env(o);
    tmpfs_mount disk(env.output(), 1 << 20);
    if (!disk.ok())
        GTEST_SKIP() << "cannot mount a tmpfs here (" << disk.error() << "); needs root";
    // Fill the disk but for about 100 kB.
    std::string filler_path = env.output() + "/filler";
    {
        std::ofstream f(filler_path, std::ios::binary);
        std::string block(4096, 'f');
        for (int i = 0; i < 256 - 25; ++i)
            f.write(block.data(), static_cast<std::streamsize>(block.size()));
    }
    env.start();
    std::vector<std::string> ids{"d1", "d2", "d3"};
    for (auto& id : ids)
        env.drop(id + ".json", image_job(id));
    // Each job gets its result from the API, then fails to write its 200 kB image.
    ASSERT_TRUE(eventually(
        [&] {
            for (auto& id : ids)
                if (str(env.job(id), "error").find("No space left on device") == std::string::npos)
                    return false;
            return true;
        },
        30s))
        << env.log();
    std::this_thread::sleep_for(1s);
    for (auto& id : ids) {
        auto j = env.job(id);
        EXPECT_EQ(str(j, "state"), "processing") << id << ": waits for space, not failed";
        EXPECT_EQ(j.at("outputs").as_array().size(), 0u);
        EXPECT_FALSE(fs::exists(env.output() + "/" + id + "/output.png"));
    }
    auto stats = env.sim_stats(false);
    std::uint64_t results_before = count(stats, "result");
    // Space returns: the downloads are retried and complete, without asking the API again.
    fs::remove(filler_path);
    ASSERT_TRUE(env.wait_terminal(ids, 60s)) << env.log();
    for (auto& id : ids)
        expect_completed_with_exact_media(env, id);
    EXPECT_EQ(count(env.sim_stats(false), "result"), results_before)
        << "the result was kept, not fetched again";
    for (auto& id : ids)
        for (auto& e : fs::directory_iterator(env.output() + "/" + id))
            EXPECT_NE(e.path().filename().string()[0], '.') << "a temporary file was left behind";
    EXPECT_EQ(env.stop(), 0);
}

// Another process holding klingd's database (BEGIN EXCLUSIVE) until release().
class database_lock {
public:
    explicit database_lock(const std::string& path) {
        held_ = sqlite3_open(path.c_str(), &db_) == SQLITE_OK;
        // klingd may be writing at this moment: wait for the lock rather than fail at once.
        sqlite3_busy_timeout(db_, 10000);
        held_ =
            held_ && sqlite3_exec(db_, "BEGIN EXCLUSIVE", nullptr, nullptr, nullptr) == SQLITE_OK;
    }
    database_lock(const database_lock&) = delete;
    database_lock& operator=(const database_lock&) = delete;
    ~database_lock() { release(); }
    bool held() const { return held_; }
    void release() {
        if (!db_)
            return;
        sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr);
        sqlite3_close(db_);
        db_ = nullptr;
        held_ = false;
    }

private:
    sqlite3* db_ = nullptr;
    bool held_ = false;
};

TEST(database, locked_by_another_process_for_a_while_delays_but_loses_nothing) {
    daemon_env env;
    env.start();
    auto ids = drop_image_jobs(env, "b", 10);
    ASSERT_TRUE(eventually([&] { return env.jobs().size() == ids.size(); }, 10s));
    database_lock lock(env.dir() + "/klingd.db");
    ASSERT_TRUE(lock.held());
    // Longer than klingd's busy timeout (5 s): its writes fail and are tried again.
    auto more = drop_image_jobs(env, "c", 5);
    ids.insert(ids.end(), more.begin(), more.end());
    // Held until klingd's writes have failed on it (after its 5 s busy timeout).
    ASSERT_TRUE(
        eventually([&] { return env.log().find("database is locked") != std::string::npos; }, 30s))
        << env.log();
    lock.release();
    ASSERT_TRUE(env.wait_terminal(ids, 60s)) << env.log();
    for (auto& id : ids)
        expect_completed_with_exact_media(env, id);
    EXPECT_NE(env.log().find("database is locked"), std::string::npos)
        << "the lock was not noticed; the test proves nothing";
    for (auto& [marker, n] : submissions_by_marker(env.sim_stats()))
        EXPECT_EQ(n, 1) << marker;
    EXPECT_EQ(env.stop(), 0);
}

// /v1/health asked every 20 ms while `go_on()` holds: how fast klingd's event loop answers.
struct health_probes {
    int probes = 0;
    int over_100_ms = 0;
    double worst_ms = 0;
    std::string failure; // an answer that was not a 200
};

template <class Pred>
health_probes probe_health(daemon_env& env, Pred go_on) {
    health_probes h;
    klingd::client::control_client socket(env.socket(), 5s);
    while (go_on(h.probes)) {
        auto t0 = std::chrono::steady_clock::now();
        auto r = socket.call(boost::beast::http::verb::get, "/v1/health");
        double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                        .count();
        if (!r || r->status != 200) {
            h.failure = r ? r->text : r.error().message();
            return h;
        }
        h.worst_ms = std::max(h.worst_ms, ms);
        h.over_100_ms += ms > 100;
        ++h.probes;
        std::this_thread::sleep_for(20ms); // the probes' pace, not a synchronisation
    }
    return h;
}

// The event loop never waits on the database: while another process holds it locked
// for 10 s (twice klingd's busy timeout) and jobs arrive, /v1/health answers within
// 100 ms throughout, and every job completes, submitted once, when the lock goes.
TEST(database, a_10_s_lock_by_another_process_never_holds_up_the_event_loop) {
    daemon_env env;
    env.start();
    auto ids = drop_image_jobs(env, "h", 5);
    ASSERT_TRUE(eventually([&] { return env.jobs().size() == ids.size(); }, 10s));
    database_lock lock(env.dir() + "/klingd.db");
    ASSERT_TRUE(lock.held());
    auto locked_at = std::chrono::steady_clock::now();
    auto more = drop_image_jobs(env, "l", 5); // intake, polls and answers all want the database now
    ids.insert(ids.end(), more.begin(), more.end());
    auto h =
        probe_health(env, [&](int) { return std::chrono::steady_clock::now() - locked_at < 10s; });
    ASSERT_EQ(h.failure, "");
    // Every answer within 100 ms but for a rare hiccup of a loaded machine; a loop that
    // waited on the database would stall for klingd's 5 s busy timeout.
    EXPECT_LE(h.over_100_ms, h.probes / 100) << "over " << h.probes << " probes";
    EXPECT_LT(h.worst_ms, 1000.0) << "over " << h.probes << " probes";
    EXPECT_NE(env.log().find("database is locked"), std::string::npos)
        << "klingd never met the lock; the test proves nothing\n"
        << env.log();
    lock.release();
    ASSERT_TRUE(env.wait_terminal(ids, 60s)) << env.log();
    for (auto& id : ids)
        expect_completed_with_exact_media(env, id);
    for (auto& [marker, n] : submissions_by_marker(env.sim_stats()))
        EXPECT_EQ(n, 1) << marker;
    EXPECT_EQ(env.stop(), 0);
}

// The event loop never waits on the disk either: with every fsync of the output folder
// taking half a second (a slow or busy disk), /v1/health answers within 100 ms
// throughout the downloads, and every job completes with its files.
TEST(output_disk, slow_fsyncs_of_results_never_hold_up_the_event_loop) {
    daemon_env env;
    temp_dir shim("slowdisk");
    std::string slowed_log = shim / "slowed";
    std::filesystem::create_directories(env.output());
    env.start({{"LD_PRELOAD", POWERCUT_PRELOAD_PATH},
               {"SLOW_FSYNC_UNDER", std::filesystem::canonical(env.output()).string()},
               {"SLOW_FSYNC_MS", "500"},
               {"SLOW_FSYNC_LOG", slowed_log}});
    auto ids = drop_image_jobs(env, "w", 3);
    auto deadline = std::chrono::steady_clock::now() + 60s;
    // Probes at a steady pace; whether the jobs are done is asked now and then.
    auto h = probe_health(env, [&](int probes) {
        return (probes % 10 != 0 || !env.wait_terminal(ids, 0s)) &&
               std::chrono::steady_clock::now() < deadline;
    });
    ASSERT_EQ(h.failure, "");
    ASSERT_TRUE(env.wait_terminal(ids, 0s)) << env.log();
    std::string slowed = read_file(slowed_log);
    EXPECT_GE(std::count(slowed.begin(), slowed.end(), '\n'), 5 * 3)
        << "the slow disk was not met; the test proves nothing";
    EXPECT_LE(h.over_100_ms, h.probes / 100) << "over " << h.probes << " probes";
    EXPECT_LT(h.worst_ms, 400.0) << "over " << h.probes << " probes";
    for (auto& id : ids)
        expect_completed_with_exact_media(env, id);
    EXPECT_EQ(env.stop(), 0);
}

// A writer renames a new x.json over one klingd has read but not yet recorded (the
// database is locked meanwhile, so recording waits): each file is processed on its own,
// and none is moved unread.
TEST(database, a_file_renamed_over_one_being_recorded_is_taken_on_its_own) {
    daemon_options o;
    o.log_level = "debug";
    daemon_env env(o);
    env.start();
    database_lock lock(env.dir() + "/klingd.db");
    ASSERT_TRUE(lock.held());
    env.drop("x.json", image_job("first"));
    ASSERT_TRUE(eventually(
        [&] { return env.log().find("spool: reading x.json") != std::string::npos; }, 10s))
        << env.log();
    std::string second = image_job("second");
    second.insert(1, R"("id":"y",)");
    env.drop("x.json", second); // renamed over the first, which is being recorded
    // Released well within klingd's 5 s busy timeout: the first file's job is recorded.
    lock.release();
    ASSERT_TRUE(env.wait_terminal({"x", "y"}, 60s)) << env.log();
    EXPECT_EQ(env.state("x"), "completed");
    EXPECT_EQ(env.state("y"), "completed");
    EXPECT_EQ(read_file(env.dir() + "/spool/accepted/x.json"), second);
    EXPECT_FALSE(std::filesystem::exists(env.dir() + "/spool/accepted/x.json.1"));
    EXPECT_TRUE(std::filesystem::is_empty(env.incoming()));
    EXPECT_EQ(env.stop(), 0);
}

// Starting klingd on a database it must refuse: exit status 1 and the reason on stderr.
std::pair<int, std::string> start_expecting_failure(daemon_env& env) {
    child_process k(KLINGD_PATH, {"--config", env.config_path()},
                    {{"SEGMIND_API_KEY", env.options().api_key}}, "klingd-refused");
    auto rc = k.wait(20s);
    return {rc.value_or(-1), k.stderr_text()};
}

TEST(database, a_damaged_file_at_start_is_refused_with_the_reason_and_left_as_it_is) {
    daemon_env env;
    env.start();
    for (int i = 0; i < 300; ++i)
        env.drop(fmt::format("x{}.json", i), image_job(fmt::format("x{}", i)));
    ASSERT_TRUE(eventually([&] { return env.jobs().size() == 300; }, 20s));
    EXPECT_EQ(env.stop(), 0);
    std::string path = env.dir() + "/klingd.db";
    std::string bytes = read_file(path);
    ASSERT_GT(bytes.size(), 40000u);
    for (std::size_t i = 4096 * 2; i < 4096 * 8; ++i)
        bytes[i] = static_cast<char>(i * 7);
    write_file(path, bytes);
    auto [rc, err] = start_expecting_failure(env);
    EXPECT_NE(rc, 0);
    EXPECT_NE(err.find("is damaged"), std::string::npos) << err;
    EXPECT_NE(err.find(path), std::string::npos) << err;
    EXPECT_TRUE(read_file(path) == bytes) << "the damaged database was written to";
}

TEST(database, a_read_only_database_is_refused_at_start_with_the_reason) {
    daemon_env env;
    env.start();
    env.drop("r1.json", image_job("r1"));
    ASSERT_TRUE(eventually([&] { return env.jobs().size() == 1; }, 10s));
    EXPECT_EQ(env.stop(), 0);
    // A read-only bind mount of a folder holding the database (root ignores file modes).
    std::string ro = env.dir() + "/ro";
    fs::create_directories(ro);
    fs::copy_file(env.dir() + "/klingd.db", ro + "/klingd.db");
    if (::mount(ro.c_str(), ro.c_str(), nullptr, MS_BIND, nullptr) != 0)
        GTEST_SKIP() << "cannot bind-mount here: " << std::strerror(errno);
    struct unmount {
        std::string d;
        ~unmount() { ::umount2(d.c_str(), MNT_DETACH); }
    } guard{ro};
    if (::mount(nullptr, ro.c_str(), nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY, nullptr) != 0)
        GTEST_SKIP() << "cannot remount read-only here: " << std::strerror(errno);
    std::string cfg = read_file(env.config_path());
    auto at = cfg.find(env.dir() + "/klingd.db");
    cfg.replace(at, (env.dir() + "/klingd.db").size(), ro + "/klingd.db");
    write_file(env.config_path(), cfg);
    auto [rc, err] = start_expecting_failure(env);
    EXPECT_NE(rc, 0);
    EXPECT_NE(err.find("read-only"), std::string::npos) << "stderr: " << err;
}

TEST(database, a_version_1_database_is_migrated_and_its_jobs_go_on) {
    daemon_env env;
    std::string path = env.dir() + "/klingd.db";
    {
        sqlite3* db = nullptr;
        ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
        std::string sql =
            read_file(std::string(KLINGD_SOURCE_DIR) + "/tests/storage/fixtures/schema-v1.sql");
        // A pending job of that era, to be submitted by the new klingd.
        sql.replace(sql.find("PRAGMA user_version = 1;"), 0,
                    "INSERT INTO jobs (id, model, params, state, created_at, updated_at) VALUES "
                    "('v1-pending', 'kling-o1', '{\"prompt\":\"v1-pending "
                    "@Image1\",\"image_urls\":[\"https://in.example/a.png\"]}', 'pending', "
                    "1800000000000, 1800000000000);\n");
        char* msg = nullptr;
        ASSERT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &msg), SQLITE_OK) << msg;
        sqlite3_close(db);
    }
    env.start();
    ASSERT_TRUE(env.wait_terminal({"v1-pending"}, 30s)) << env.log();
    expect_completed_with_exact_media(env, "v1-pending");
    EXPECT_EQ(str(env.job("old-done"), "state"), "completed");
    EXPECT_EQ(env.stop(), 0);
}

TEST(spool, a_removed_incoming_folder_is_reported_and_intake_resumes_when_it_is_back) {
    daemon_env env;
    env.start();
    fs::remove_all(env.dir() + "/spool");
    ASSERT_TRUE(eventually(
        [&] { return env.log().find("was removed or is no longer readable") != std::string::npos; },
        10s))
        << env.log();
    EXPECT_EQ(env.api("GET", "/v1/health").status, 200);
    fs::create_directories(env.incoming());
    ASSERT_TRUE(eventually([&] { return env.log().find("watching") != std::string::npos; }, 10s))
        << env.log();
    env.drop("back.json", image_job("back"));
    ASSERT_TRUE(env.wait_terminal({"back"}, 30s)) << env.log();
    expect_completed_with_exact_media(env, "back");
    EXPECT_TRUE(fs::exists(env.dir() + "/spool/accepted/back.json"))
        << "accepted/ is created again";
    EXPECT_EQ(env.stop(), 0);
}

// Job files that appear without being written or renamed in incoming/: a hard link, and
// an O_TMPFILE file linked in. Each is taken without a restart; one a writer still holds
// open (through its other name) is taken only once the writer is done.
TEST(spool, hard_links_and_linked_in_tmpfiles_are_taken_once_no_writer_holds_them) {
    daemon_env env;
    env.start();
    std::string outside = env.dir() + "/outside";
    fs::create_directories(outside);

    write_file(outside + "/hl.json", image_job("hl"));
    ASSERT_EQ(::link((outside + "/hl.json").c_str(), (env.incoming() + "/hl.json").c_str()), 0);

    int tmp = ::open(env.incoming().c_str(), O_TMPFILE | O_WRONLY, 0644);
    ASSERT_GE(tmp, 0) << std::strerror(errno);
    std::string body = image_job("tmpf");
    ASSERT_EQ(::write(tmp, body.data(), body.size()), static_cast<ssize_t>(body.size()));
    std::string proc = fmt::format("/proc/self/fd/{}", tmp);
    ASSERT_EQ(::linkat(AT_FDCWD, proc.c_str(), AT_FDCWD, (env.incoming() + "/tmpf.json").c_str(),
                       AT_SYMLINK_FOLLOW),
              0)
        << std::strerror(errno);
    ::close(tmp);

    // A writer has written half its file and links it in before it is done.
    std::string whole = image_job("half");
    int w = ::open((outside + "/half.json").c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0644);
    ASSERT_GE(w, 0);
    ASSERT_EQ(::write(w, whole.data(), whole.size() / 2), static_cast<ssize_t>(whole.size() / 2));
    ASSERT_EQ(::link((outside + "/half.json").c_str(), (env.incoming() + "/half.json").c_str()), 0);

    ASSERT_TRUE(env.wait_terminal({"hl", "tmpf"}, 30s)) << env.log();
    expect_completed_with_exact_media(env, "hl");
    expect_completed_with_exact_media(env, "tmpf");
    // Still open for writing: not taken (a quiet period this negative check needs).
    std::this_thread::sleep_for(1500ms);
    EXPECT_TRUE(fs::exists(env.incoming() + "/half.json"));
    EXPECT_FALSE(fs::exists(env.dir() + "/spool/rejected/half.json"));
    std::string rest = whole.substr(whole.size() / 2);
    ASSERT_EQ(::write(w, rest.data(), rest.size()), static_cast<ssize_t>(rest.size()));
    ::close(w);
    ASSERT_TRUE(env.wait_terminal({"half"}, 30s)) << env.log();
    expect_completed_with_exact_media(env, "half");
    EXPECT_TRUE(fs::is_empty(env.incoming()));
    EXPECT_EQ(env.stop(), 0);
}

// A file whose content does not parse yet is read once more, a second later, before
// it is rejected: here its writer completes it (through another name) in between.
TEST(spool, a_file_that_does_not_parse_is_read_once_more_before_it_is_rejected) {
    daemon_options o;
    o.log_level = "debug";
    daemon_env env(o);
    env.start();
    std::string outside = env.dir() + "/outside";
    fs::create_directories(outside);
    std::string whole = image_job("late");
    write_file(outside + "/late.json", whole.substr(0, whole.size() / 2));
    ASSERT_EQ(::link((outside + "/late.json").c_str(), (env.incoming() + "/late.json").c_str()), 0);
    ASSERT_TRUE(eventually(
        [&] { return env.log().find("spool: reading late.json") != std::string::npos; }, 10s))
        << env.log();
    write_file(outside + "/late.json", whole); // the same file: completed in place
    ASSERT_TRUE(env.wait_terminal({"late"}, 30s)) << env.log();
    expect_completed_with_exact_media(env, "late");
    EXPECT_FALSE(fs::exists(env.dir() + "/spool/rejected/late.json"));

    env.drop("broken.json", "{ not json"); // and one that never parses is still rejected
    ASSERT_TRUE(
        eventually([&] { return fs::exists(env.dir() + "/spool/rejected/broken.json"); }, 10s));
    EXPECT_EQ(env.stop(), 0);
}

// A media server that trickles its bytes (1 KiB/s) holds a download slot for no longer
// than the pace window: the download is cut, with the reason, once it falls under
// 16 KiB/s over 10 s, and is retried; the job completes when the media comes at pace.
TEST(downloads, a_trickling_media_server_is_cut_and_the_download_retried) {
    daemon_env env;
    env.start();
    env.sim_config(R"({"trickle_rate": 1})");
    env.drop("slow.json", image_job("slow"));
    ASSERT_TRUE(eventually(
        [&] { return env.log().find("under the minimum of 16 KiB/s") != std::string::npos; }, 40s))
        << env.log();
    env.sim_config(R"({"trickle_rate": 0})");
    ASSERT_TRUE(env.wait_terminal({"slow"}, 60s)) << env.log();
    expect_completed_with_exact_media(env, "slow");
    EXPECT_GE(env.sim_stats().at("faults").at("trickle").as_int64(), 1);
    EXPECT_EQ(env.stop(), 0);
}

// A TCP server that accepts connections and never sends a byte.
class silent_server {
public:
    silent_server() {
        fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
        ::listen(fd_, 64);
        socklen_t len = sizeof a;
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
        port_ = ntohs(a.sin_port);
        thread_ = std::thread([this] {
            while (true) {
                int c = ::accept(fd_, nullptr, nullptr);
                if (c < 0)
                    return;
                accepted_++;
                held_.push_back(c);
            }
        });
    }
    ~silent_server() {
        ::shutdown(fd_, SHUT_RDWR);
        ::close(fd_);
        thread_.join();
        for (int c : held_)
            ::close(c);
    }
    int port() const { return port_; }
    int accepted() const { return accepted_; }

private:
    int fd_ = -1;
    int port_ = 0;
    std::atomic<int> accepted_{0};
    std::vector<int> held_;
    std::thread thread_;
};

// A port nobody listens on (bound, then closed).
int closed_port() {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t len = sizeof a;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    ::close(fd);
    return ntohs(a.sin_port);
}

struct network_case {
    const char* name;
    std::string (*base_url)(daemon_env&, silent_server&);
    const char* reason; // what the job's error must say
};

std::string with_base_url(daemon_env& env, const std::string& url, double timeout_s) {
    std::string cfg = read_file(env.config_path());
    auto b = cfg.find("base_url = \"");
    auto e = cfg.find('"', b + 12);
    cfg.replace(b + 12, e - b - 12, url);
    auto t = cfg.find("request_timeout_s = 10");
    cfg.replace(t, 22, fmt::format("request_timeout_s = {}", timeout_s));
    write_file(env.config_path(), cfg);
    return url;
}

class network : public ::testing::TestWithParam<network_case> {};

TEST_P(network, a_failing_network_means_retries_with_backoff_and_a_visible_reason) {
    daemon_env env;
    silent_server silent;
    with_base_url(env, GetParam().base_url(env, silent), 1);
    env.start();
    env.drop("n1.json", image_job("n1"));
    // Three attempts, each reported, the waits between them growing.
    ASSERT_TRUE(eventually(
        [&] {
            auto r = env.api("GET", "/v1/jobs/n1");
            if (r.status != 200)
                return false;
            int n = 0;
            for (auto& h : r.body.at("history").as_array())
                n += str(h, "note").find("submit not sent") != std::string::npos;
            return n >= 6;
        },
        40s))
        << env.log();
    auto j = env.api("GET", "/v1/jobs/n1").body;
    // Connect and TLS come before "submitting" is committed: the job never left pending.
    EXPECT_EQ(str(j, "state"), "pending");
    for (auto& h : j.at("history").as_array())
        EXPECT_EQ(str(h, "note").find("-> submitting"), std::string::npos) << str(h, "note");
    EXPECT_NE(str(j, "error").find(GetParam().reason), std::string::npos) << str(j, "error");
    EXPECT_EQ(str(j, "attempts"), "0") << "nothing reached an API";
    std::vector<double> waits;
    for (auto& h : j.at("history").as_array()) {
        std::string note = str(h, "note");
        if (auto at = note.find("retrying in "); at != std::string::npos)
            waits.push_back(std::atof(note.c_str() + at + 12));
    }
    ASSERT_GE(waits.size(), 6u);
    // Full jitter: each wait is random below a ceiling that doubles per failure.
    EXPECT_GT(*std::max_element(waits.begin() + 1, waits.end()), waits.front())
        << "backoff does not grow";
    EXPECT_EQ(env.api("GET", "/v1/health").status, 200);
    EXPECT_TRUE(env.running());
    EXPECT_EQ(env.sim_stats(false).at("submissions").as_int64(), 0);
    EXPECT_EQ(env.stop(), 0);
}

INSTANTIATE_TEST_SUITE_P(
    faults, network,
    ::testing::Values(network_case{"dns_failure",
                                   [](daemon_env&, silent_server&) {
                                       return std::string("https://klingd-test.invalid");
                                   },
                                   "cannot resolve klingd-test.invalid"},
                      network_case{"connection_refused",
                                   [](daemon_env&, silent_server&) {
                                       return fmt::format("https://127.0.0.1:{}", closed_port());
                                   },
                                   "cannot connect to 127.0.0.1"},
                      network_case{"tls_handshake_failure",
                                   [](daemon_env&, silent_server&) {
                                       // A plain-HTTP server where TLS is expected.
                                       static sim_process plain({"--plain"});
                                       return fmt::format("https://127.0.0.1:{}", plain.port());
                                   },
                                   "TLS handshake with 127.0.0.1"},
                      network_case{"accepts_and_never_answers",
                                   [](daemon_env&, silent_server& s) {
                                       return fmt::format("https://127.0.0.1:{}", s.port());
                                   },
                                   "timed out"}),
    [](const auto& info) { return std::string(info.param.name); });

// A kill while the connection to the API is being opened (a TLS handshake that hangs)
// leaves a job that was never sent: it is submitted after the restart, not failed as
// an unknown outcome.
TEST(submit, a_kill_during_the_connect_and_handshake_leaves_the_job_pending) {
    daemon_env env;
    silent_server silent;
    std::string cfg = read_file(env.config_path());
    auto b = cfg.find("base_url = \"") + 12;
    std::string real = cfg.substr(b, cfg.find('"', b) - b);
    with_base_url(env, fmt::format("https://127.0.0.1:{}", silent.port()), 10);
    env.start();
    env.drop("k1.json", image_job("k1"));
    ASSERT_TRUE(eventually([&] { return silent.accepted() >= 1; }, 20s)) << env.log();
    EXPECT_EQ(env.state("k1"), "pending") << "committed before the handshake was done";
    env.kill9();
    with_base_url(env, real, 10);
    env.start();
    ASSERT_TRUE(env.wait_terminal({"k1"}, 60s)) << env.log();
    EXPECT_EQ(env.state("k1"), "completed") << str(env.job("k1"), "error");
    EXPECT_EQ(submissions_by_marker(env.sim_stats())["k1"], 1);
    EXPECT_EQ(env.stop(), 0);
}

} // namespace
