// Temporaries in output folders: a process's own are named so that one left by a dead
// process of this host is removed at once, and no other host's (nor a live one's) ever.
#include "daemon/output_dir.hpp"
#include "tests/support/child_process.hpp"

#include <filesystem>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

using namespace klingd;
namespace fs = std::filesystem;

// A pid that no process has now: a child that has exited and been reaped.
pid_t dead_pid() {
    pid_t p = ::fork();
    if (p == 0)
        ::_exit(0);
    ::waitpid(p, nullptr, 0);
    return p;
}

TEST(output_dir, a_dead_processs_temporaries_go_and_no_one_elses) {
    test::temp_dir dir;
    fs::create_directories(dir / "out/job");
    auto out = daemon::output_dir::open(dir / "out", "job");
    ASSERT_TRUE(out);
    // ".<stem>-<host>-<pid>-<random>.tmp" as this process names them.
    auto mine = daemon::output_dir::temp_name("my-stem-1");
    ASSERT_TRUE(mine.starts_with(".my-stem-1-")) << mine;
    auto tail = mine.substr(std::string(".my-stem-1-").size()); // host-pid-random.tmp
    auto host = tail.substr(0, tail.find('-'));
    ASSERT_EQ(host.find('-'), std::string::npos);
    auto dead = std::to_string(dead_pid());
    auto name = [&](const std::string& stem, const std::string& h, const std::string& pid) {
        return "." + stem + "-" + h + "-" + pid + "-0badf00d.tmp";
    };
    std::vector<std::string> gone = {name("a", host, dead), name("b-" + host + "-7", host, dead)};
    std::vector<std::string> kept = {
        mine,                                            // this live process's
        name("c", host, std::to_string(::getppid())),    // a live process of this host
        name("d", "other_" + host, dead),                // another host's (dead pid here)
        name("e-" + host + "-" + dead, "prod_web", "1"), // the host's name inside the stem
    };
    for (auto& f : gone)
        test::write_file(dir / ("out/job/" + f), "x");
    for (auto& f : kept)
        test::write_file(dir / ("out/job/" + f), "x");
    out->remove_stale_temps(std::chrono::hours(24));
    for (auto& f : gone)
        EXPECT_FALSE(fs::exists(dir / ("out/job/" + f))) << f;
    for (auto& f : kept)
        EXPECT_TRUE(fs::exists(dir / ("out/job/" + f))) << f;
}

} // namespace
