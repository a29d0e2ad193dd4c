// Completion hooks' parts: the webhook signature against the Standard Webhooks
// specification's published test vector, and the command runner (its environment, its
// input, its exit status, a timeout that kills it and what it started, bounded output).
#include "daemon/hooks.hpp"
#include "tests/support/child_process.hpp"
#include "tests/support/digest.hpp"

#include <chrono>
#include <gtest/gtest.h>
#include <openssl/evp.h>

namespace {

using namespace klingd;
using namespace std::chrono_literals;

TEST(webhook_signature, reproduces_the_standard_webhooks_test_vector) {
    // The specification's vector: secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw (the key is
    // the base64 after "whsec_"), id msg_p5jXN8AQM9LWM0D4loKWxJek, timestamp 1614265330.
    auto key = test::base64_decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    ASSERT_EQ(key.size(), 24u);
    EXPECT_EQ(daemon::webhook_signature(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
                                        R"({"test": 2432232314})"),
              "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    // Any other byte of the message gives another signature.
    EXPECT_NE(daemon::webhook_signature(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265331,
                                        R"({"test": 2432232314})"),
              "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
}

TEST(run_command, gets_the_job_on_stdin_and_only_the_environment_given) {
    test::temp_dir dir;
    auto out = dir / "seen";
    auto r = daemon::run_command(
        {"/bin/sh", "-c", "cat > " + out + "; env | sort >> " + out + "; echo said something"},
        {"PATH=/usr/bin:/bin", "KLINGD_JOB_ID=j1", "KLINGD_JOB_STATE=completed"}, R"({"id":"j1"})",
        10s);
    EXPECT_TRUE(r.ok) << r.error;
    auto seen = test::read_file(out);
    EXPECT_EQ(seen.rfind(R"({"id":"j1"})", 0), 0u) << seen;
    EXPECT_NE(seen.find("KLINGD_JOB_ID=j1\n"), std::string::npos) << seen;
    EXPECT_NE(seen.find("KLINGD_JOB_STATE=completed\n"), std::string::npos);
    EXPECT_EQ(seen.find("SEGMIND_API_KEY"), std::string::npos) << "nothing of klingd's environment";
    EXPECT_EQ(r.output, "said something\n");
}

TEST(run_command, a_failing_command_says_its_status_and_output) {
    auto r = daemon::run_command({"/bin/sh", "-c", "echo no disk >&2; exit 3"}, {}, "x", 10s);
    EXPECT_FALSE(r.ok);
    EXPECT_EQ(r.error, "exit status 3");
    EXPECT_EQ(r.output, "no disk\n");
    r = daemon::run_command({"/nonexistent/hook"}, {}, "", 10s);
    EXPECT_FALSE(r.ok);
    EXPECT_NE(r.error.find("/nonexistent/hook"), std::string::npos) << r.error;
}

TEST(run_command, a_command_that_hangs_is_killed_with_what_it_started) {
    test::temp_dir dir;
    auto pidfile = dir / "child.pid";
    auto start = std::chrono::steady_clock::now();
    // It starts a child that would outlive it, then hangs without reading its input.
    auto r =
        daemon::run_command({"/bin/sh", "-c", "sleep 60 & echo $! > " + pidfile + "; sleep 60"}, {},
                            std::string(1 << 20, 'x'), 300ms);
    auto took = std::chrono::steady_clock::now() - start;
    EXPECT_FALSE(r.ok);
    EXPECT_NE(r.error.find("killed after 0.3 s"), std::string::npos) << r.error;
    EXPECT_LT(took, 5s);
    auto pid = std::stoi(test::read_file(pidfile));
    EXPECT_TRUE(test::eventually([&] { return ::kill(pid, 0) != 0; }, 5s))
        << "the child it started is gone too";
}

TEST(run_command, a_command_that_leaves_a_child_behind_ends_when_it_exits) {
    auto start = std::chrono::steady_clock::now();
    // The child holds the output open; the command itself is done at once.
    auto r = daemon::run_command({"/bin/sh", "-c", "sleep 30 & echo started it"}, {}, "", 20s);
    EXPECT_TRUE(r.ok) << r.error;
    EXPECT_EQ(r.output, "started it\n");
    EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
}

TEST(run_command, no_descriptor_of_the_caller_but_the_three_reaches_the_command) {
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0); // not close-on-exec, as Asio's sockets are not
    auto r = daemon::run_command({"/bin/sh", "-c", "ls /proc/self/fd"}, {}, "", 10s);
    ::close(fds[0]);
    ::close(fds[1]);
    EXPECT_TRUE(r.ok) << r.error;
    // 0, 1, 2 and the one ls opened to list them.
    EXPECT_EQ(r.output, "0\n1\n2\n3\n") << r.output;
}

TEST(run_command, output_is_kept_to_four_kilobytes) {
    auto r = daemon::run_command({"/bin/sh", "-c", "head -c 100000 /dev/zero | tr '\\0' a"}, {}, "",
                                 10s);
    EXPECT_TRUE(r.ok) << r.error;
    EXPECT_EQ(r.output.size(), 4096u + 3);
    EXPECT_TRUE(r.output.ends_with("..."));
}

} // namespace
