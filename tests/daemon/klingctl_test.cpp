// klingctl against a real klingd: list, show, wait with their --json forms and
// the contract's exit codes (0, 1, 2, 3, 4); and klingd's TLS refusal seen through it.
#include "client/control_client.hpp"
#include "tests/daemon/daemon_env.hpp"

#include <algorithm>
#include <filesystem>
#include <gtest/gtest.h>
#include <sstream>
#include <sys/stat.h>

namespace {

using namespace klingd::test;
namespace json = boost::json;
using namespace std::chrono_literals;

struct run_result {
    int rc;
    std::string out, err;
};

run_result klingctl(const std::vector<std::string>& args,
                    const std::map<std::string, std::string>& env = {}) {
    child_process p(KLINGCTL_PATH, args, env, "klingctl");
    auto rc = p.wait(60s);
    return {rc.value_or(-1), p.stdout_text(), p.stderr_text()};
}

class klingctl_test : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        env_ = new daemon_env();
        env_->start();
        env_->drop("done.json", image_job("done"));
        env_->drop("broken.json",
                   image_job("broken").replace(image_job("x").find("merge"), 5, "SIM_FAIL"));
        ASSERT_TRUE(env_->wait_terminal({"done", "broken"}, 60s)) << env_->log();
    }
    static void TearDownTestSuite() {
        delete env_;
        env_ = nullptr;
    }
    std::vector<std::string> with_socket(std::vector<std::string> args) {
        args.insert(args.begin(), {"--socket", env_->socket()});
        return args;
    }
    static daemon_env* env_;
};
daemon_env* klingctl_test::env_ = nullptr;

TEST_F(klingctl_test, list_prints_an_aligned_table_and_json) {
    auto r = klingctl(with_socket({"list"}));
    EXPECT_EQ(r.rc, 0) << r.err;
    EXPECT_EQ(r.out.rfind("ID ", 0), 0u) << r.out;
    EXPECT_NE(r.out.find("done "), std::string::npos);
    EXPECT_NE(r.out.find("completed"), std::string::npos);
    EXPECT_EQ(r.out.find("\033["), std::string::npos) << "no colours when not on a terminal";
    auto j = klingctl(with_socket({"list", "--json"}));
    ASSERT_EQ(j.rc, 0);
    auto a = json::parse(j.out).as_array();
    EXPECT_EQ(a.size(), 2u);
    auto failed = klingctl(with_socket({"list", "--state", "failed", "--json"}));
    auto fa = json::parse(failed.out).as_array();
    ASSERT_EQ(fa.size(), 1u);
    EXPECT_EQ(fa[0].at("id").as_string(), "broken");
}

TEST_F(klingctl_test, list_with_a_bad_state_is_a_usage_error) {
    auto r = klingctl(with_socket({"list", "--state", "sleeping"}));
    EXPECT_EQ(r.rc, 2);
    EXPECT_NE(r.err.find("not a job state"), std::string::npos) << r.err;
}

TEST_F(klingctl_test, show_prints_fields_and_history_or_json) {
    auto r = klingctl(with_socket({"show", "done"}));
    EXPECT_EQ(r.rc, 0) << r.err;
    EXPECT_NE(r.out.find("state:        completed"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("history:"), std::string::npos);
    EXPECT_NE(r.out.find("submitting -> queued"), std::string::npos);
    auto j = klingctl(with_socket({"show", "done", "--json"}));
    ASSERT_EQ(j.rc, 0);
    auto o = json::parse(j.out).as_object();
    for (auto key : {"id", "model", "state", "request_id", "error", "outputs", "priority",
                     "created_at", "updated_at", "attempts", "polls", "history"})
        EXPECT_TRUE(o.contains(key)) << key;
    EXPECT_EQ(klingctl(with_socket({"show", "nope"})).rc, 1);
}

TEST_F(klingctl_test, wait_exit_codes) {
    EXPECT_EQ(klingctl(with_socket({"wait", "done"})).rc, 0);
    auto f = klingctl(with_socket({"wait", "done", "broken"}));
    EXPECT_EQ(f.rc, 1);
    EXPECT_NE(f.out.find("broken: failed"), std::string::npos) << f.out;
    EXPECT_EQ(klingctl(with_socket({"wait", "missing"})).rc, 1);
    // a job held pending by a pause, waited for with a tiny timeout
    env_->api("POST", "/v1/pause");
    env_->drop("held.json", image_job("held"));
    ASSERT_TRUE(eventually([&] { return env_->state("held") == "pending"; }, 5s));
    auto t = klingctl(with_socket({"wait", "done", "held", "--timeout", "0.3"}));
    EXPECT_EQ(t.rc, 4);
    EXPECT_NE(t.out.find("held: still running"), std::string::npos) << t.out;
    EXPECT_NE(t.out.find("done: completed"), std::string::npos) << "what ended is said too";
    EXPECT_EQ(t.err, "") << "no progress line when piped";
    // On a terminal (a pseudo-terminal from script(1)), a progress line.
    child_process tty(
        "/usr/bin/script",
        {"-qec", std::string(KLINGCTL_PATH) + " --socket " + env_->socket() + " wait done broken",
         "/dev/null"},
        {}, "script");
    ASSERT_TRUE(tty.wait(60s).has_value());
    auto screen = tty.stdout_text();
    EXPECT_NE(screen.find("waiting: 2/2 done, 1 not completed"), std::string::npos) << screen;
    EXPECT_NE(screen.find("broken: failed"), std::string::npos) << screen;
    env_->api("POST", "/v1/resume");
}

// Every event stream klingd keeps is taken: wait reads the states instead, and still
// ends when the job does.
TEST_F(klingctl_test, wait_reads_the_states_when_klingd_has_no_event_stream_to_spare) {
    std::vector<klingd::client::event_subscription> taken;
    while (true) {
        auto s = klingd::client::event_subscription::open(env_->socket(), "");
        if (!s) {
            ASSERT_EQ(s.error(), klingd::core::errc::streams_full) << s.error().message();
            break;
        }
        taken.push_back(std::move(*s));
        ASSERT_LT(taken.size(), 1000u) << "klingd keeps no limit on event streams";
    }
    env_->drop("late.json", image_job("late"));
    auto r = klingctl(with_socket({"wait", "late", "--timeout", "50"}));
    EXPECT_EQ(r.rc, 0) << r.out << r.err;
    EXPECT_NE(r.out.find("late: completed"), std::string::npos) << r.out;
    EXPECT_NE(r.err.find("no event stream to spare"), std::string::npos) << r.err;
}

TEST_F(klingctl_test, usage_errors_exit_2_and_an_absent_daemon_exits_3) {
    EXPECT_EQ(klingctl(with_socket({"frobnicate"})).rc, 2);
    EXPECT_EQ(klingctl({"--socket", env_->socket()}).rc, 2);
    auto r = klingctl({"--socket", env_->dir() + "/no.sock", "list"});
    EXPECT_EQ(r.rc, 3);
    EXPECT_NE(r.err.find("is klingd running?"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("systemctl status klingd"), std::string::npos) << r.err;
    auto usage = klingctl(with_socket({"frobnicate"}));
    EXPECT_NE(usage.err.find("--help"), std::string::npos) << usage.err;
    auto e = klingctl({"list"}, {{"KLINGD_SOCKET", env_->dir() + "/nothing.sock"}});
    EXPECT_EQ(e.rc, 3);
    EXPECT_NE(e.err.find("nothing.sock"), std::string::npos);
}

TEST(klingd_tls, an_untrusted_server_gets_nothing_and_the_job_says_why) {
    daemon_env env;
    // Trust a CA that did not sign the sim's certificate.
    std::string cfg = read_file(env.config_path());
    auto at = cfg.find("/ca.pem");
    cfg.replace(at, 7, "/other-ca.pem");
    write_file(env.config_path(), cfg);
    env.start();
    env.drop("tls.json", image_job("tls"));
    ASSERT_TRUE(eventually(
        [&] {
            auto j = env.job("tls");
            return j.is_object() && !j.at("error").is_null();
        },
        10s))
        << env.log();
    auto j = env.job("tls");
    // Waiting to be sent again (or being retried right now), never further.
    std::string state(j.at("state").as_string());
    EXPECT_TRUE(state == "pending" || state == "submitting") << state;
    std::string err(j.at("error").as_string());
    EXPECT_NE(err.find("certificate not trusted"), std::string::npos) << err;
    EXPECT_EQ(env.sim_stats(false).at("submissions").as_int64(), 0);
    EXPECT_EQ(env.sim_stats(false).at("submit").as_object().size(), 0u)
        << "no request reached the server";
}

// What bash completion offers for a command line whose last word is being completed:
// completion/klingctl.bash sourced (with the bash-completion package's helpers when
// with_helpers and they are installed), _klingctl run, COMPREPLY printed one a line.
std::vector<std::string> complete(const std::vector<std::string>& words, bool with_helpers) {
    auto quote = [](const std::string& w) {
        std::string q = "'";
        for (char c : w)
            q += c == '\'' ? std::string("'\\''") : std::string(1, c);
        return q + "'";
    };
    // As bash splits a line: "--socket=PATH" gives the words --socket, = and PATH, with no
    // blank between them on the line.
    std::string line = quote(KLINGCTL_PATH);
    std::string text = KLINGCTL_PATH;
    std::string previous;
    for (auto& w : words) {
        line += " " + quote(w);
        text += (w == "=" || previous == "=" ? "" : " ") + w;
        previous = w;
    }
    std::string script;
    if (with_helpers)
        script += "source /usr/share/bash-completion/bash_completion || exit 9\n";
    script += "source " + quote(std::string(KLINGD_SOURCE_DIR) + "/completion/klingctl.bash") +
              " || exit 8\n";
    script += "COMP_WORDS=(" + line + ")\n";
    script += "COMP_CWORD=" + std::to_string(words.size()) + "\n";
    script += "COMP_LINE=" + quote(text) + "\nCOMP_POINT=${#COMP_LINE}\n";
    script += "_klingctl\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n";
    child_process p("/bin/bash", {"--norc", "--noprofile", "-c", script}, {}, "bash");
    auto rc = p.wait(60s);
    EXPECT_EQ(rc.value_or(-1), 0) << p.stderr_text();
    EXPECT_EQ(p.stderr_text(), "") << "completion must not print errors";
    std::vector<std::string> out;
    std::istringstream in(p.stdout_text());
    for (std::string l; std::getline(in, l);)
        if (!l.empty())
            out.push_back(l);
    std::sort(out.begin(), out.end());
    return out;
}

using words = std::vector<std::string>;

TEST_F(klingctl_test, bash_completion_offers_commands_states_and_the_daemons_job_ids) {
    std::vector<bool> modes{false};
    if (std::filesystem::exists("/usr/share/bash-completion/bash_completion"))
        modes.push_back(true);
    for (bool helpers : modes) {
        SCOPED_TRACE(helpers ? "with bash-completion's helpers" : "plain bash");
        EXPECT_EQ(complete({"s"}, helpers), (words{"show", "stats", "submit"}));
        EXPECT_EQ(complete({"--socket", env_->socket(), "w"}, helpers), (words{"wait", "watch"}));
        // Live ids, from the daemon the line names: every job for show and wait, the
        // failed or expired ones for retry, the pending ones for cancel.
        auto all = klingctl(with_socket({"list", "--json"}));
        ASSERT_EQ(all.rc, 0) << all.err;
        words every, retryable, pending;
        auto listed = json::parse(all.out); // kept: a loop over a temporary's member dangles
        for (auto& j : listed.as_array()) {
            std::string id(j.at("id").as_string()), state(j.at("state").as_string());
            every.push_back(id);
            if (state == "failed" || state == "expired")
                retryable.push_back(id);
            if (state == "pending")
                pending.push_back(id);
        }
        for (auto* v : {&every, &retryable, &pending})
            std::sort(v->begin(), v->end());
        ASSERT_TRUE(std::count(every.begin(), every.end(), "done"));
        ASSERT_TRUE(std::count(retryable.begin(), retryable.end(), "broken"));
        EXPECT_EQ(complete({"--socket", env_->socket(), "show", ""}, helpers), every);
        EXPECT_EQ(complete({"--socket", env_->socket(), "show", "do"}, helpers), (words{"done"}));
        EXPECT_EQ(complete({"--socket", env_->socket(), "retry", ""}, helpers), retryable);
        EXPECT_EQ(complete({"--socket", env_->socket(), "cancel", ""}, helpers), pending);
        EXPECT_EQ(complete({"--socket", env_->socket(), "wait", "done", ""}, helpers), every);
        // --socket=PATH, as bash splits it at the "=".
        EXPECT_EQ(complete({"--socket", "=", env_->socket(), "show", "do"}, helpers),
                  (words{"done"}));
        EXPECT_EQ(complete({"--socket", "=", env_->socket(), "w"}, helpers),
                  (words{"wait", "watch"}));
        // The path after "--socket=" completes as a file name.
        EXPECT_EQ(complete({"--socket", "=", env_->socket().substr(0, env_->socket().size() - 1)},
                           helpers),
                  (words{env_->socket()}));
        EXPECT_EQ(complete({"list", "--state", "fa"}, helpers), (words{"failed"}));
        EXPECT_EQ(complete({"list", "--j"}, helpers), (words{"--json"}));
        // No daemon there: no ids, and nothing printed over the command line.
        EXPECT_EQ(complete({"--socket", "/nonexistent/klingd.sock", "show", ""}, helpers),
                  (words{}));
    }
}

// completion/_klingctl in an interactive zsh (a pseudo-terminal, through zpty): the
// matches offered for line, sorted.
std::vector<std::string> zsh_complete(const std::string& line) {
    child_process p("/usr/bin/zsh",
                    {"-f", std::string(KLINGD_SOURCE_DIR) + "/tests/support/zsh_complete.zsh",
                     std::string(KLINGD_SOURCE_DIR) + "/completion", line},
                    {}, "zsh");
    auto rc = p.wait(60s);
    EXPECT_EQ(rc.value_or(-1), 0) << line << ": " << p.stderr_text();
    std::vector<std::string> out;
    std::istringstream in(p.stdout_text());
    for (std::string l; std::getline(in, l);)
        if (!l.empty())
            out.push_back(l);
    std::sort(out.begin(), out.end());
    return out;
}

TEST_F(klingctl_test, zsh_completion_offers_commands_states_and_the_daemons_job_ids) {
    ASSERT_TRUE(std::filesystem::exists("/usr/bin/zsh"))
        << "zsh is not installed (scripts/install-deps.sh installs it)";
    std::string k = KLINGCTL_PATH, sock = env_->socket();
    EXPECT_EQ(zsh_complete(k + " s"), (words{"show", "stats", "submit"}));
    EXPECT_EQ(zsh_complete(k + " --socket=" + sock + " w"), (words{"wait", "watch"}));
    auto all = klingctl(with_socket({"list", "--json"}));
    ASSERT_EQ(all.rc, 0) << all.err;
    words every, retryable, pending;
    auto listed = json::parse(all.out);
    for (auto& j : listed.as_array()) {
        std::string id(j.at("id").as_string()), state(j.at("state").as_string());
        every.push_back(id);
        if (state == "failed" || state == "expired")
            retryable.push_back(id);
        if (state == "pending")
            pending.push_back(id);
    }
    for (auto* v : {&every, &retryable, &pending})
        std::sort(v->begin(), v->end());
    ASSERT_TRUE(std::count(retryable.begin(), retryable.end(), "broken"));
    // Live ids from the daemon the line names, in either spelling of --socket.
    EXPECT_EQ(zsh_complete(k + " --socket=" + sock + " show "), every);
    EXPECT_EQ(zsh_complete(k + " --socket " + sock + " show do"), (words{"done"}));
    EXPECT_EQ(zsh_complete(k + " --socket=" + sock + " retry "), retryable);
    EXPECT_EQ(zsh_complete(k + " --socket=" + sock + " cancel "), pending);
    EXPECT_EQ(zsh_complete(k + " list --state=fa"), (words{"failed"}));
    EXPECT_EQ(zsh_complete(k + " list --j"), (words{"--json"}));
    // No daemon there: no ids.
    EXPECT_EQ(zsh_complete(k + " --socket=/nonexistent/klingd.sock show "), (words{}));
}

TEST_F(klingctl_test, list_quiet_prints_only_the_ids) {
    auto r = klingctl(with_socket({"list", "-q", "--state", "completed"}));
    EXPECT_EQ(r.rc, 0) << r.err;
    auto j = klingctl(with_socket({"list", "--json", "--state", "completed"}));
    std::string ids;
    auto listed = json::parse(j.out);
    for (auto& x : listed.as_array())
        ids += std::string(x.at("id").as_string()) + "\n";
    EXPECT_NE(ids.find("done\n"), std::string::npos);
    EXPECT_EQ(r.out, ids);
}

} // namespace

namespace {

std::map<std::string, std::string> validate_lines(const std::string& out) {
    std::map<std::string, std::string> by_file;
    std::istringstream in(out);
    for (std::string l; std::getline(in, l);)
        by_file[l.substr(0, l.find(':'))] = l;
    return by_file;
}

TEST_F(klingctl_test, validate_judges_job_files_offline_as_the_spool_does) {
    temp_dir dir("validate");
    write_file(dir / "good.json", image_job("v-good"));
    write_file(dir / "nomodel.json", R"({"params":{"prompt":"x"}})");
    write_file(dir / "badparam.json",
               R"({"model":"kling-o1","params":{"prompt":"x","image_urls":["https://a/b.png"],)"
               R"("resolution":"8K"}})");
    write_file(dir / "notes.txt", image_job("v-txt"));
    // Names the spool would never take: still being written, as it reads them.
    write_file(dir / ".hidden.json", image_job("v-hidden"));
    write_file(dir / "part.json.tmp", image_job("v-part"));
    // No daemon is asked: the socket named does not exist.
    std::map<std::string, std::string> nowhere{{"KLINGD_SOCKET", dir / "none.sock"}};
    auto r = klingctl({"validate", dir / "good.json", dir / "nomodel.json", dir / "badparam.json",
                       dir / "notes.txt", dir / "missing.json", dir / ".hidden.json",
                       dir / "part.json.tmp"},
                      nowhere);
    EXPECT_EQ(r.rc, 1) << r.out << r.err;
    auto lines = validate_lines(r.out);
    EXPECT_EQ(lines["good.json"], "good.json: ok: job good, model kling-o1");
    EXPECT_NE(lines["notes.txt"].find("only *.json files are taken"), std::string::npos);
    EXPECT_NE(lines["missing.json"].find("cannot be read"), std::string::npos);
    EXPECT_NE(lines[".hidden.json"].find("ignored by the spool"), std::string::npos) << r.out;
    EXPECT_NE(lines["part.json.tmp"].find("ignored by the spool"), std::string::npos) << r.out;
    // The reasons are the ones the spool writes beside a rejected file.
    for (auto name : {"nomodel.json", "badparam.json"}) {
        env_->drop(name, read_file(dir / name));
        auto error = env_->dir() + "/spool/rejected/" + name + ".error";
        ASSERT_TRUE(eventually([&] { return std::filesystem::exists(error); }, 20s)) << env_->log();
        auto spool_says = read_file(error);
        EXPECT_EQ(lines[name] + "\n", spool_says);
    }
    auto ok = klingctl({"validate", dir / "good.json"}, nowhere);
    EXPECT_EQ(ok.rc, 0) << ok.out << ok.err;
}

TEST_F(klingctl_test, validate_checks_local_files_against_a_configurations_inputs) {
    temp_dir dir("validate-inputs");
    std::filesystem::create_directories(dir / "media");
    std::string png("\x89PNG\r\n\x1a\n", 8);
    png += std::string(200, 'x');
    write_file(dir / "media/a.png", png);
    auto job_with = [](const std::string& id, const std::string& path) {
        return R"({"id":")" + id +
               R"(","model":"kling-o1","params":{"prompt":"x","image_urls":["file://)" + path +
               R"("]}})";
    };
    write_file(dir / "inside.json", job_with("inside", dir / "media/a.png"));
    write_file(dir / "outside.json", job_with("outside", "/etc/passwd"));
    for (auto f : {"inside.json", "outside.json"}) // whatever the umask
        std::filesystem::permissions(dir / f, std::filesystem::perms(0644));
    // A configuration as the service has it, with a key file this user cannot read: the
    // secrets are not looked for.
    write_file(dir / "klingd.toml", "[api]\napi_key_file = \"/nonexistent/key\"\n[inputs]\n"
                                    "directories = [\"" +
                                        (dir / "media") + "\"]\n");
    auto r = klingctl(
        {"validate", "--config", dir / "klingd.toml", dir / "inside.json", dir / "outside.json"});
    EXPECT_EQ(r.rc, 1) << r.out << r.err;
    auto lines = validate_lines(r.out);
    EXPECT_EQ(lines["inside.json"],
              "inside.json: ok: job inside, model kling-o1, 1 local file checked");
    EXPECT_NE(lines["outside.json"].find("outside [inputs] directories"), std::string::npos)
        << lines["outside.json"];
    // Writable by others: refused as the spool would, and a FIFO does not hang validate.
    write_file(dir / "shared.json", job_with("shared", dir / "media/a.png"));
    std::filesystem::permissions(dir / "shared.json", std::filesystem::perms(0664));
    ASSERT_EQ(::mkfifo((dir / "fifo.json").c_str(), 0644), 0);
    auto shared = klingctl({"validate", dir / "shared.json", dir / "fifo.json"});
    EXPECT_EQ(shared.rc, 1);
    lines = validate_lines(shared.out);
    EXPECT_NE(lines["shared.json"].find("mode 0664"), std::string::npos) << lines["shared.json"];
    EXPECT_NE(lines["fifo.json"].find("not a regular file"), std::string::npos) << shared.out;
    // Without a configuration the local file is named as not checked, on stderr too.
    auto plain = klingctl({"validate", dir / "inside.json"});
    EXPECT_EQ(plain.rc, 0);
    EXPECT_NE(plain.out.find("1 local file NOT checked"), std::string::npos) << plain.out;
    EXPECT_NE(plain.err.find("--config"), std::string::npos) << plain.err;
    // A configuration with errors is a usage error, saying what is wrong.
    write_file(dir / "broken.toml", "[api]\nrequests_per_minute = 0\n");
    auto broken = klingctl({"validate", "--config", dir / "broken.toml", dir / "inside.json"});
    EXPECT_EQ(broken.rc, 2);
    EXPECT_NE(broken.err.find("requests_per_minute"), std::string::npos) << broken.err;
}

} // namespace

namespace {

TEST(housekeeping, purge_prunes_finished_jobs_and_old_spool_files_and_the_ids_stay_taken) {
    daemon_env env;
    env.start();
    env.drop("a.json", image_job("a"));
    env.drop("b.json", image_job("b"));
    env.drop("bad.json", "{");
    ASSERT_TRUE(env.wait_terminal({"a", "b"}, 60s)) << env.log();
    auto spool = env.dir() + "/spool/";
    ASSERT_TRUE(eventually(
        [&] {
            return std::filesystem::exists(spool + "accepted/b.json") &&
                   std::filesystem::exists(spool + "rejected/bad.json.error");
        },
        20s));
    auto submissions = [&] {
        return env.sim_stats(false).at("submissions").to_number<int>();
    };
    auto submits_before = submissions();
    EXPECT_EQ(submits_before, 2); // a and b, each once
    auto sock = std::vector<std::string>{"--socket", env.socket()};
    auto with = [&](std::vector<std::string> args) {
        args.insert(args.begin(), sock.begin(), sock.end());
        return args;
    };
    // Nothing is that old yet.
    auto none = klingctl(with({"purge", "--older-than", "30"}));
    EXPECT_EQ(none.rc, 0) << none.err;
    EXPECT_EQ(none.out, "0 finished jobs pruned, 0 spool files removed\n");
    auto r = klingctl(with({"purge", "--older-than", "0"}));
    EXPECT_EQ(r.rc, 0) << r.err;
    EXPECT_EQ(r.out, "2 finished jobs pruned, 4 spool files removed\n") << env.log();
    EXPECT_FALSE(std::filesystem::exists(spool + "accepted/a.json"));
    EXPECT_FALSE(std::filesystem::exists(spool + "rejected/bad.json.error"));
    // Gone from every answer...
    EXPECT_EQ(env.api("GET", "/v1/jobs/a").status, 404);
    EXPECT_EQ(klingctl(with({"list", "-q"})).out, "");
    EXPECT_EQ(env.api("GET", "/v1/stats").body.at("jobs").at("pruned").to_number<int>(), 2);
    // ...but the ids stay taken: the same job again is a no-op (nothing is submitted), and
    // another job with its id is refused, from the spool and over the socket.
    env.drop("a.json", image_job("a"));
    ASSERT_TRUE(eventually([&] { return std::filesystem::exists(spool + "accepted/a.json"); }, 20s))
        << env.log();
    auto other = image_job("a");
    other.replace(other.find("merge"), 5, "blend");
    env.drop("a2.json", R"({"id":"a",)" + other.substr(1));
    ASSERT_TRUE(
        eventually([&] { return std::filesystem::exists(spool + "rejected/a2.json.error"); }, 20s))
        << env.log();
    EXPECT_NE(read_file(spool + "rejected/a2.json.error").find("is taken"), std::string::npos);
    temp_dir dir("purge");
    write_file(dir / "b.json", image_job("b"));
    auto again = klingctl(with({"submit", dir / "b.json"}));
    EXPECT_EQ(again.rc, 0) << again.err;
    EXPECT_EQ(again.out, "b\n");
    write_file(dir / "b.json", other);
    auto refused = klingctl(with({"submit", dir / "b.json"}));
    EXPECT_EQ(refused.rc, 1);
    EXPECT_NE(refused.err.find("is taken"), std::string::npos) << refused.err;
    // A new job dropped after them is submitted and done: had a or b been queued again,
    // they would have been sent by now too.
    env.drop("c.json", image_job("c"));
    ASSERT_TRUE(env.wait_terminal({"c"}, 60s)) << env.log();
    EXPECT_EQ(submissions(), submits_before + 1) << "a pruned job is never sent again";
    // Bad requests say what is wrong.
    EXPECT_EQ(env.api("POST", "/v1/purge").status, 400);
    EXPECT_EQ(env.api("POST", "/v1/purge?older_than_days=-1").status, 400);
    EXPECT_EQ(env.api("POST", "/v1/purge?days=3").status, 400);
    EXPECT_EQ(klingctl(with({"purge", "--older-than", "-2"})).rc, 2);
    // Restarted, the tombstones are still there.
    EXPECT_EQ(env.stop(), 0);
    env.start();
    auto after = klingctl(with({"submit", dir / "b.json"}));
    EXPECT_EQ(after.rc, 1);
}

} // namespace

namespace {

TEST(forecast, stats_say_when_the_waiting_jobs_should_be_done_and_what_they_cost) {
    daemon_env env;
    // kling-o1 priced (written into its table, before the start).
    auto cfg = read_file(env.config_path());
    cfg.replace(cfg.find("[models.\"kling-o1\"]\n"), 19, "[models.\"kling-o1\"]\nprice = 0.25\n");
    write_file(env.config_path(), cfg);
    env.start();
    auto sock = std::vector<std::string>{"--socket", env.socket()};
    auto stats = [&] {
        auto args = sock;
        args.push_back("stats");
        return klingctl(args);
    };
    auto idle = stats();
    EXPECT_EQ(idle.rc, 0) << idle.err;
    EXPECT_NE(idle.out.find("forecast: nothing waiting"), std::string::npos) << idle.out;
    // Held back by a pause: three jobs wait.
    env.api("POST", "/v1/pause");
    for (auto id : {"f1", "f2", "f3"})
        env.drop(std::string(id) + ".json", image_job(id));
    ASSERT_TRUE(eventually(
        [&] {
            return env.state("f1") == "pending" && env.state("f2") == "pending" &&
                   env.state("f3") == "pending";
        },
        20s));
    auto r = env.api("GET", "/v1/stats");
    auto& f = r.body.at("forecast");
    EXPECT_EQ(f.at("jobs_left").to_number<int>(), 3);
    EXPECT_GT(f.at("seconds_left").to_number<double>(), 0);
    EXPECT_TRUE(f.at("done_at").is_string());
    EXPECT_DOUBLE_EQ(f.at("cost").to_number<double>(), 0.75);
    EXPECT_DOUBLE_EQ(f.at("requests_per_job").to_number<double>(), 3);
    auto s = stats();
    EXPECT_NE(s.out.find("forecast: 3 jobs left, done in about"), std::string::npos) << s.out;
    EXPECT_NE(s.out.find("the pending ones cost 0.75"), std::string::npos) << s.out;
    env.api("POST", "/v1/resume");
}

} // namespace

namespace {

TEST(top, on_a_terminal_redraws_counts_budget_forecast_and_the_jobs_that_end) {
    daemon_env env;
    env.start();
    env.drop("t1.json", image_job("t1"));
    ASSERT_TRUE(env.wait_terminal({"t1"}, 60s));
    // Under a pseudo-terminal (script(1), flushing as it goes).
    child_process tty(
        "/usr/bin/script",
        {"-qfec",
         std::string(KLINGCTL_PATH) + " --socket " + env.socket() + " top --interval 0.2 -n 600",
         "/dev/null"},
        {}, "script");
    ASSERT_TRUE(
        eventually([&] { return tty.stdout_text().find("klingd top:") != std::string::npos; }, 20s))
        << tty.stdout_text() << tty.stderr_text();
    env.drop("t2.json", image_job("t2"));
    ASSERT_TRUE(eventually(
        [&] { return tty.stdout_text().find("completed  t2") != std::string::npos; }, 60s))
        << tty.stdout_text();
    auto screen = tty.stdout_text();
    // The last frame, as the terminal shows it.
    auto frame = screen.substr(screen.rfind("\033[H\033[J"));
    EXPECT_NE(frame.find("completed 2"), std::string::npos) << frame;
    EXPECT_NE(frame.find("allowed"), std::string::npos) << frame;
    EXPECT_NE(frame.find("submissions going"), std::string::npos) << frame;
    EXPECT_NE(frame.find("forecast: nothing waiting"), std::string::npos) << frame;
    EXPECT_NE(frame.find("recently ended:"), std::string::npos) << frame;
    EXPECT_NE(frame.find("\xe2\x96"), std::string::npos) << "the requests' sparkline: " << frame;
    EXPECT_GT(std::count(screen.begin(), screen.end(), '\033'), 4) << "redrawn in place";
}

TEST(top, piped_prints_plain_lines) {
    daemon_env env;
    env.start();
    auto r = klingctl({"--socket", env.socket(), "top", "--interval", "0.1", "-n", "3"});
    EXPECT_EQ(r.rc, 0) << r.err;
    EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 3) << r.out;
    EXPECT_NE(r.out.find("jobs: pending 0"), std::string::npos) << r.out;
    EXPECT_EQ(r.out.find('\033'), std::string::npos) << "no terminal codes when piped";
}

} // namespace
