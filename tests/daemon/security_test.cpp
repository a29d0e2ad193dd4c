// Attacks on klingd's promises: TLS it must not trust, plain HTTP off loopback, the
// API key leaking anywhere, other local users on the control socket, job ids and
// planted symlinks that try to write outside the spool and output folders, and
// server data that is too large.
#include "tests/daemon/daemon_env.hpp"

#include <cstring>
#include <filesystem>
#include <fmt/format.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

using namespace klingd::test;
namespace json = boost::json;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

void set_base_url(daemon_env& env, const std::string& url, const std::string& ca = {}) {
    std::string cfg = read_file(env.config_path());
    auto b = cfg.find("base_url = \"");
    auto e = cfg.find('"', b + 12);
    cfg.replace(b + 12, e - b - 12, url);
    if (!ca.empty()) {
        b = cfg.find("ca_file = \"");
        e = cfg.find('"', b + 11);
        cfg.replace(b + 11, e - b - 11, ca);
    }
    write_file(env.config_path(), cfg);
}

struct tls_case {
    const char* name;
    const char* cert; // the sim's certificate (and key) in the test certificates
    const char* reason;
};

class bad_certificate : public ::testing::TestWithParam<tls_case> {};

TEST_P(bad_certificate, no_request_is_sent_and_the_error_says_which) {
    daemon_options o;
    o.sim_args = {"--tls-cert", cert_dir() + "/" + GetParam().cert + ".pem", "--tls-key",
                  cert_dir() + "/" + GetParam().cert + ".key", "--log-requests"};
    daemon_env env(o);
    env.start();
    env.drop("t.json", image_job("t"));
    ASSERT_TRUE(eventually([&] { return !str(env.job("t"), "error").empty(); }, 10s)) << env.log();
    auto j = env.job("t");
    std::string state = str(j, "state");
    EXPECT_TRUE(state == "pending" || state == "submitting") << state;
    std::string err = str(j, "error");
    EXPECT_NE(err.find("certificate not trusted"), std::string::npos) << err;
    EXPECT_NE(err.find(GetParam().reason), std::string::npos) << err;
    // The sim logs every request it reads; its certificate is bad for this test's client too.
    std::string sim_log = env.sim().process().stderr_text();
    EXPECT_EQ(sim_log.find("/v2/"), std::string::npos) << "a request reached the server:\n"
                                                       << sim_log;
    EXPECT_EQ(env.stop(), 0);
}

INSTANTIATE_TEST_SUITE_P(
    tls, bad_certificate,
    ::testing::Values(tls_case{"untrusted_ca", "untrusted", "unable to get local issuer"},
                      tls_case{"wrong_host_name", "wrong-host", "IP address mismatch"},
                      tls_case{"expired", "expired", "certificate has expired"}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(plain_http, works_end_to_end_to_loopback_and_is_refused_for_any_other_host) {
    daemon_env env;
    sim_process plain({"--plain", "--time-scale", "0.02", "--api-key", env.options().api_key});
    set_base_url(env, plain.base_url());
    env.start();
    env.drop("h.json", image_job("h"));
    ASSERT_TRUE(env.wait_terminal({"h"}, 30s)) << env.log();
    EXPECT_EQ(str(env.job("h"), "state"), "completed") << str(env.job("h"), "error");
    EXPECT_EQ(env.stop(), 0);

    set_base_url(env, "http://api.segmind.example");
    child_process k(KLINGD_PATH, {"--config", env.config_path()},
                    {{"SEGMIND_API_KEY", env.options().api_key}}, "klingd-http");
    EXPECT_EQ(k.wait(20s).value_or(-1), 2);
    EXPECT_NE(k.stderr_text().find("api.base_url"), std::string::npos) << k.stderr_text();
    EXPECT_NE(k.stderr_text().find("loopback"), std::string::npos) << k.stderr_text();
}

// Every file under a folder, recursively, with its content.
void expect_no_key_in_tree(const std::string& root, const std::string& key) {
    if (!fs::exists(root))
        return;
    for (auto& e : fs::recursive_directory_iterator(root)) {
        if (!e.is_regular_file())
            continue;
        EXPECT_EQ(read_file(e.path()).find(key), std::string::npos)
            << "the API key is in " << e.path();
    }
}

TEST(secrets, the_api_key_appears_in_no_log_database_answer_output_or_config_dump) {
    daemon_options o;
    o.api_key = "sk-LEAKCHECK-5f1e0c9a7b3d";
    daemon_env env(o);
    env.start();
    auto ids = drop_image_jobs(env, "k", 4);
    ids.push_back("kv");
    env.drop("kv.json", video_job("kv"));
    ids.push_back("kfail");
    env.drop("kfail.json", image_job("SIM_FAIL"));
    env.drop("bad.json", "{ not json");
    ASSERT_TRUE(env.wait_terminal(ids, 60s)) << env.log();
    // A 401 too: the sim stops accepting the key, and the server's words are logged.
    env.sim_config(R"({"api_key":"another-key"})");
    env.drop("k401.json", image_job("k401"));
    ASSERT_TRUE(eventually([&] { return count(env.sim_stats(false), "submit", "401") > 0; }, 20s))
        << env.log();
    ASSERT_TRUE(eventually([&] { return env.log().find("401") != std::string::npos; }, 10s));
    env.signal(SIGHUP);

    const std::string& key = o.api_key;
    std::vector<std::string> answers;
    for (auto target : {"/v1/health", "/v1/jobs?limit=500", "/v1/stats", "/metrics"})
        answers.push_back(env.api("GET", target).text);
    for (auto& id : ids)
        answers.push_back(env.api("GET", "/v1/jobs/" + id).text);
    answers.push_back(env.api("GET", "/v1/jobs/k401").text);
    answers.push_back(env.api("POST", "/v1/jobs", "{\"bad\":").text);
    for (auto& a : answers) {
        EXPECT_FALSE(a.empty());
        EXPECT_EQ(a.find(key), std::string::npos) << "the API key is in a socket answer: " << a;
    }
    EXPECT_EQ(env.stop(), 0);

    std::string log = env.log();
    EXPECT_NE(log.find("k401"), std::string::npos) << "the log is not the one we think";
    EXPECT_EQ(log.find(key), std::string::npos) << "the API key is in the log";
    expect_no_key_in_tree(env.output(), key);
    expect_no_key_in_tree(env.dir() + "/spool", key);
    for (auto f : {"klingd.db", "klingd.db-wal", "klingd.db-shm"})
        if (fs::exists(env.dir() + "/" + f)) {
            EXPECT_EQ(read_file(env.dir() + "/" + f).find(key), std::string::npos)
                << "the API key is in " << f;
        }
    // The configuration dump, with the key from the environment and from a key file.
    child_process check(KLINGD_PATH, {"--config", env.config_path(), "--check-config"},
                        {{"SEGMIND_API_KEY", key}}, "klingd-check");
    EXPECT_EQ(check.wait(20s).value_or(-1), 0) << check.stderr_text();
    EXPECT_NE(check.stdout_text().find("api_key"), std::string::npos) << check.stdout_text();
    EXPECT_EQ((check.stdout_text() + check.stderr_text()).find(key), std::string::npos);
    std::string key_file = env.dir() + "/api-key";
    write_file(key_file, key + "\n");
    ::chmod(key_file.c_str(), 0600);
    std::string cfg = read_file(env.config_path());
    cfg.replace(cfg.find("[api]\n"), 6, "[api]\napi_key_file = \"" + key_file + "\"\n");
    write_file(env.config_path(), cfg);
    child_process check2(KLINGD_PATH, {"--config", env.config_path(), "--check-config"}, {},
                         "klingd-check2");
    EXPECT_EQ(check2.wait(20s).value_or(-1), 0) << check2.stderr_text();
    EXPECT_EQ((check2.stdout_text() + check2.stderr_text()).find(key), std::string::npos);
}

// After a key change by SIGHUP, the old key is still a secret: an answer that repeats it
// (a careless API, here to a submit sent with the old key and answered after the change)
// reaches no log line, job history, database or socket answer.
TEST(secrets, every_key_this_process_has_held_is_scrubbed_after_a_key_change) {
    daemon_options o;
    o.api_key = "sk-NEWKEY-0f9e8d7c6b5a"; // the one the sim takes
    o.sim_args = {"--echo-key", "--slow-rate", "1", "--slow-s", "3"};
    daemon_env env(o);
    const std::string old_key = "sk-OLDKEY-1a2b3c4d5e6f";
    std::string key_file = env.dir() + "/api-key";
    write_file(key_file, old_key + "\n");
    ::chmod(key_file.c_str(), 0600);
    std::string cfg = read_file(env.config_path());
    cfg.replace(cfg.find("[api]\n"), 6, "[api]\napi_key_file = \"" + key_file + "\"\n");
    write_file(env.config_path(), cfg);
    env.start();
    env.drop("e1.json", image_job("e1"));
    // The submit is on its way with the old key (its answer comes 3 s later): the key changes.
    ASSERT_TRUE(eventually([&] { return env.state("e1") == "submitting"; }, 20s)) << env.log();
    write_file(key_file, o.api_key + "\n");
    env.signal(SIGHUP);
    ASSERT_TRUE(eventually([&] { return count(env.sim_stats(false), "submit", "401") > 0; }, 20s))
        << env.log();
    env.sim_config(R"({"slow_rate":0})");
    ASSERT_TRUE(env.wait_terminal({"e1"}, 60s)) << env.log();
    EXPECT_EQ(env.state("e1"), "completed") << str(env.job("e1"), "error");
    std::string log = env.log();
    auto reloaded = log.find("reload:");
    auto refused = log.find("Invalid API key");
    ASSERT_NE(reloaded, std::string::npos) << log;
    ASSERT_NE(refused, std::string::npos) << "the 401 was never met; the test proves nothing\n"
                                          << log;
    EXPECT_LT(reloaded, refused) << "the answer came before the key changed; the test proves "
                                    "nothing\n"
                                 << log;
    std::vector<std::string> answers;
    for (auto target : {"/v1/health", "/v1/jobs?limit=500", "/v1/stats", "/metrics", "/v1/jobs/e1"})
        answers.push_back(env.api("GET", target).text);
    EXPECT_EQ(env.stop(), 0);
    log = env.log();
    for (const auto& key : {old_key, o.api_key}) {
        EXPECT_EQ(log.find(key), std::string::npos) << "a key is in the log";
        for (auto& a : answers)
            EXPECT_EQ(a.find(key), std::string::npos) << "a key is in a socket answer: " << a;
        for (auto f : {"klingd.db", "klingd.db-wal"})
            if (fs::exists(env.dir() + "/" + f)) {
                EXPECT_EQ(read_file(env.dir() + "/" + f).find(key), std::string::npos)
                    << "a key is in " << f;
            }
    }
    EXPECT_NE(log.find("[redacted]"), std::string::npos) << "the echoed key was not met\n" << log;
}

// Connects to a Unix socket as another user (in a child process) and sends request, if
// any: "connected" and the answer's text, or "error: ..." (with errno's text).
std::string talk_as(uid_t uid, const std::vector<gid_t>& groups, const std::string& path,
                    const std::string& request = {}) {
    return in_child([&]() -> std::string {
        if (::setgroups(groups.size(), groups.data()) != 0 || ::setgid(groups.front()) != 0 ||
            ::setuid(uid) != 0)
            return "error: cannot become that user";
        int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
        if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
            return std::string("error: connect: ") + std::strerror(errno);
        std::string out = "connected\n";
        (void)!::write(fd, request.data(), request.size());
        char buf[4096];
        if (!request.empty())
            for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;)
                out.append(buf, static_cast<std::size_t>(n));
        return out;
    });
}

TEST(control_socket, mode_and_owner_as_configured_and_another_user_is_kept_out) {
    if (::geteuid() != 0)
        GTEST_SKIP() << "needs root to act as another user";
    daemon_env env;
    env.start();
    struct stat st {};
    ASSERT_EQ(::stat(env.socket().c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0660u);
    EXPECT_EQ(st.st_uid, ::geteuid()) << "owned by the user klingd runs as";
    EXPECT_EQ(st.st_gid, ::getegid());
    const uid_t nobody = 65534;
    auto got = talk_as(nobody, {nobody}, env.socket());
    ASSERT_NE(got, "error: cannot become that user");
    EXPECT_EQ(got, std::string("error: connect: ") + std::strerror(EACCES))
        << "another user reached a socket of mode 0660";
    EXPECT_EQ(env.stop(), 0);

    // The same user is let in when the mode allows it, so the refusal above was the mode's.
    // (Only where nobody can reach the test folder at all.)
    std::string cfg = read_file(env.config_path());
    cfg.replace(cfg.find("[control]\n"), 10, "[control]\nsocket_mode = \"0666\"\n");
    write_file(env.config_path(), cfg);
    env.start();
    ASSERT_EQ(::stat(env.socket().c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0666u);
    got = talk_as(nobody, {nobody}, env.socket());
    if (got == std::string("error: connect: ") + std::strerror(EACCES))
        std::cout << "[ note     ] nobody cannot reach " << env.dir()
                  << " at all; the positive check is skipped\n";
    else
        EXPECT_EQ(got, "connected\n");
    EXPECT_EQ(env.stop(), 0);
}

TEST(control_socket, a_socket_user_s_local_files_are_judged_by_the_groups_its_process_holds) {
    // Not by the user database (which knows nothing of uid 4321): the kernel's own list for
    // the process that connected (SO_PEERGROUPS). A process that dropped a group cannot
    // have klingd read for it what that group may read.
    if (::geteuid() != 0)
        GTEST_SKIP() << "needs root to act as another user";
    daemon_env env;
    auto media = fs::path(env.dir()) / "media";
    fs::create_directories(media);
    for (auto p = media; p != p.root_path(); p = p.parent_path())
        if ((fs::status(p).permissions() & fs::perms::others_exec) == fs::perms::none)
            GTEST_SKIP() << p << " is closed to other users";
    std::string cfg = read_file(env.config_path());
    cfg.replace(cfg.find("[control]\n"), 10, "[control]\nsocket_mode = \"0666\"\n");
    cfg += fmt::format("[inputs]\ndirectories = [\"{}\"]\nupload_url = \"{}/upload-asset\"\n",
                       media.string(), env.sim().base_url());
    write_file(env.config_path(), cfg);
    write_file((media / "team.png").string(), std::string("\x89PNG\r\n\x1a\n", 8) + "team");
    ASSERT_EQ(::chown((media / "team.png").c_str(), 0, 4000), 0);
    fs::permissions(media / "team.png", fs::perms(0640));
    env.start();
    auto post = [&](const std::string& id, const std::vector<gid_t>& groups) {
        std::string body =
            fmt::format(R"({{"id":"{}","model":"kling-o1","params":{{"prompt":"p @Image1",)"
                        R"("image_urls":["file://{}"]}}}})",
                        id, (media / "team.png").string());
        return talk_as(4321, groups, env.socket(),
                       fmt::format("POST /v1/jobs HTTP/1.1\r\nHost: klingd\r\nContent-Type: "
                                   "application/json\r\nContent-Length: {}\r\nConnection: "
                                   "close\r\n\r\n{}",
                                   body.size(), body));
    };
    auto without = post("no-group", {4321});
    EXPECT_EQ(without.rfind("connected\nHTTP/1.1 400", 0), 0u) << without;
    EXPECT_NE(without.find("(uid 4321) may read"), std::string::npos) << without;
    auto with = post("in-group", {4321, 4000});
    EXPECT_EQ(with.rfind("connected\nHTTP/1.1 20", 0), 0u) << "group 4000 may read it: " << with;
    EXPECT_EQ(env.api("GET", "/v1/jobs/no-group").status, 404);
    EXPECT_EQ(env.api("GET", "/v1/jobs/in-group").status, 200);
    EXPECT_EQ(env.stop(), 0);
}

TEST(paths, no_job_id_or_planted_symlink_writes_outside_the_spool_and_output_folders) {
    daemon_env env;
    std::string outside = env.dir() + "/outside";
    fs::create_directories(outside);
    // A valid job file outside the spool, and a symlink to it planted in incoming/.
    write_file(outside + "/target.json", image_job("planted"));
    env.start();
    fs::create_symlink(outside + "/target.json", env.incoming() + "/planted.json");
    // Ids that try to leave their folder, by socket and by file.
    for (std::string id : {"../escape", "/tmp/abs", "a/b", "..", ".", "x\\y", "%2e%2e"}) {
        auto r = env.api("POST", "/v1/jobs",
                         json::serialize(json::object{{"id", id},
                                                      {"model", "kling-o1"},
                                                      {"params", json::parse(
                                                                     R"({"prompt":"p @Image1",
                                                                     "image_urls":["https://in.example/a.png"]})")}}));
        EXPECT_EQ(r.status, 400) << id << ": " << r.text;
    }
    env.drop(
        "byfile.json",
        R"({"id":"../../byfile","model":"kling-o1","params":{"prompt":"p @Image1","image_urls":["https://in.example/a.png"]}})");
    // A symlink planted where a job's output folder will go.
    fs::create_symlink(outside, env.output() + "/victim");
    env.drop("victim.json", image_job("victim"));
    env.drop("fine.json", image_job("fine"));
    ASSERT_TRUE(env.wait_terminal({"fine"}, 30s)) << env.log();
    expect_completed_with_exact_media(env, "fine");

    ASSERT_TRUE(eventually(
        [&] { return fs::exists(env.dir() + "/spool/rejected/planted.json.error"); }, 10s));
    EXPECT_NE(read_file(env.dir() + "/spool/rejected/planted.json.error").find("symbolic link"),
              std::string::npos);
    EXPECT_EQ(read_file(outside + "/target.json"), image_job("planted")) << "target changed";
    ASSERT_TRUE(eventually(
        [&] { return fs::exists(env.dir() + "/spool/rejected/byfile.json.error"); }, 10s));
    EXPECT_TRUE(env.job("planted").is_null());
    EXPECT_TRUE(env.job("byfile").is_null());
    // The victim waits with the reason; nothing was written through the symlink.
    ASSERT_TRUE(eventually([&] { return !str(env.job("victim"), "error").empty(); }, 30s))
        << env.log();
    EXPECT_NE(str(env.job("victim"), "state"), "completed");
    EXPECT_NE(str(env.job("victim"), "error").find("victim"), std::string::npos)
        << str(env.job("victim"), "error");
    std::vector<std::string> written;
    for (auto& e : fs::directory_iterator(outside))
        written.push_back(e.path().filename());
    EXPECT_EQ(written, std::vector<std::string>{"target.json"}) << "written outside";
    // Once the symlink is gone, the victim completes in a real folder.
    fs::remove(env.output() + "/victim");
    ASSERT_TRUE(env.wait_terminal({"victim"}, 90s)) << env.log();
    expect_completed_with_exact_media(env, "victim");
    EXPECT_FALSE(fs::is_symlink(env.output() + "/victim"));
    EXPECT_EQ(env.stop(), 0);
}

TEST(server_data, a_download_larger_than_the_limit_is_refused_and_leaves_no_file) {
    daemon_options o;
    o.sim_args = {"--media-bytes-image", "300000"};
    daemon_env env(o);
    std::string cfg = read_file(env.config_path());
    cfg.replace(cfg.find("[output]\n"), 9, "[output]\nmax_download_bytes = 100000\n");
    write_file(env.config_path(), cfg);
    env.start();
    env.drop("big.json", image_job("big"));
    ASSERT_TRUE(env.wait_terminal({"big"}, 30s)) << env.log();
    auto j = env.job("big");
    EXPECT_EQ(str(j, "state"), "failed");
    EXPECT_NE(str(j, "error").find("output.max_download_bytes"), std::string::npos)
        << str(j, "error");
    for (auto& e : fs::directory_iterator(env.output() + "/big"))
        EXPECT_EQ(e.path().filename(), "result.json") << "a partial download was left behind";
    EXPECT_EQ(env.stop(), 0);
}

TEST(server_data, a_result_body_larger_than_the_limit_is_refused_and_nothing_is_written) {
    daemon_options o;
    o.sim_args = {"--result-padding", "20000"};
    daemon_env env(o);
    std::string cfg = read_file(env.config_path());
    cfg.replace(cfg.find("[api]\n"), 6, "[api]\nmax_result_bytes = 8192\n");
    write_file(env.config_path(), cfg);
    env.start();
    env.drop("huge.json", image_job("huge"));
    ASSERT_TRUE(env.wait_terminal({"huge"}, 30s)) << env.log();
    auto j = env.job("huge");
    EXPECT_EQ(str(j, "state"), "failed");
    EXPECT_NE(str(j, "error").find("api.max_result_bytes"), std::string::npos) << str(j, "error");
    EXPECT_FALSE(fs::exists(env.output() + "/huge")) << "nothing of a refused result is written";
    // The status polls (small answers) were not refused: the limit applies per body.
    EXPECT_FALSE(env.sim_stats().as_object().at("status").as_object().empty());
    EXPECT_EQ(env.stop(), 0);
}

} // namespace

namespace {

// Media behind redirects to another origin (the emulator's media host "localhost",
// the API on 127.0.0.1): klingd follows them, and no media request carries the key;
// the emulator refuses and counts any that does (shown by sending one).
TEST(media, redirects_to_another_origin_are_followed_and_never_carry_the_key) {
    daemon_env env;
    env.start();
    env.sim_config(R"({"media_host": "localhost", "redirect_media": 2})");
    std::vector<std::string> ids{"r0", "r1", "r2"};
    for (auto& id : ids)
        env.drop(id + ".json", image_job(id));
    env.drop("rv.json", video_job("rv"));
    ids.push_back("rv");
    ASSERT_TRUE(env.wait_terminal(ids, 60s)) << env.log();
    auto stats = env.sim_stats(false); // before the checks below fetch the media themselves
    for (auto& id : ids)
        expect_completed_with_exact_media(env, id);
    EXPECT_EQ(stats.at("media_with_key").as_int64(), 0);
    std::int64_t on_media_host = 0;
    for (auto& [host, n] : stats.at("media_by_host").as_object())
        if (std::string_view(host).starts_with("localhost:"))
            on_media_host += n.as_int64();
    EXPECT_GE(on_media_host, 2 * static_cast<std::int64_t>(ids.size()))
        << "two hops each went to the other origin: " << json::serialize(stats);

    // The emulator's check can fail: a media request with the key is refused and counted.
    auto keyed = https_request("GET", env.sim().base_url() + "/media/nothing.png", {},
                               {{"x-api-key", env.options().api_key}}, cert_dir() + "/ca.pem");
    EXPECT_EQ(keyed.status, 403) << keyed.body;
    EXPECT_EQ(env.sim_stats(false).at("media_with_key").as_int64(), 1);

    // More than 5 redirects: the download fails, saying so.
    env.sim_config(R"({"redirect_media": 6})");
    env.drop("far.json", image_job("far"));
    ASSERT_TRUE(eventually(
        [&] { return env.log().find("redirects more than 5 times") != std::string::npos; }, 30s))
        << env.log();
    EXPECT_EQ(env.stop(), 0);
}

} // namespace
