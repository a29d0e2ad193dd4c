// The spool's cleanup: a file goes when it has been in accepted/ or rejected/ longer than
// the cut, judged by when it arrived there (a rename changes the ctime, not the mtime),
// and a symbolic link planted in place of either folder is not followed.
#include "daemon/housekeeping.hpp"
#include "tests/support/child_process.hpp"

#include <chrono>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <sys/stat.h>

namespace {

using namespace klingd;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

void write(const fs::path& p) {
    std::ofstream(p) << "{}";
}

// Sets p's mtime (and atime) days ago; its ctime stays now, as after the spool's rename.
void age_mtime(const fs::path& p, int days) {
    auto t = std::chrono::system_clock::now() - std::chrono::hours(24 * days);
    auto s = std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
    timespec ts[2] = {{s, 0}, {s, 0}};
    ASSERT_EQ(::utimensat(AT_FDCWD, p.c_str(), ts, 0), 0);
}

TEST(housekeeping, a_file_dropped_today_with_an_old_mtime_is_kept) {
    test::temp_dir dir;
    fs::create_directories(dir / "accepted");
    fs::create_directories(dir / "rejected");
    write(dir / "accepted/old-content.json");
    write(dir / "rejected/old-content.json");
    write(dir / "rejected/old-content.json.error");
    for (auto f : {"accepted/old-content.json", "rejected/old-content.json",
                   "rejected/old-content.json.error"})
        age_mtime(dir / f, 90);
    auto now = std::chrono::system_clock::now();
    auto kept = daemon::remove_old_spool_files(dir.path(), now - 24h * 30);
    EXPECT_EQ(kept.removed, 0u);
    EXPECT_EQ(kept.error, "");
    EXPECT_TRUE(fs::exists(dir / "accepted/old-content.json"));
    // Once it has been there longer than the cut (here: a cut a minute from now), it goes.
    auto gone = daemon::remove_old_spool_files(dir.path(), now + 60s);
    EXPECT_EQ(gone.removed, 3u);
    EXPECT_EQ(gone.error, "");
    EXPECT_FALSE(fs::exists(dir / "accepted/old-content.json"));
    EXPECT_FALSE(fs::exists(dir / "rejected/old-content.json.error"));
}

TEST(housekeeping, a_symbolic_link_in_place_of_a_spool_folder_is_not_followed) {
    test::temp_dir dir;
    fs::create_directories(dir / "elsewhere");
    write(dir / "elsewhere/precious.json");
    fs::create_directories(dir / "spool/rejected");
    fs::create_directory_symlink(dir / "elsewhere", dir / "spool/accepted");
    auto r = daemon::remove_old_spool_files(dir / "spool", std::chrono::system_clock::now() + 60s);
    EXPECT_EQ(r.removed, 0u);
    EXPECT_NE(r.error.find("not a folder"), std::string::npos) << r.error;
    EXPECT_TRUE(fs::exists(dir / "elsewhere/precious.json"));
}

} // namespace
