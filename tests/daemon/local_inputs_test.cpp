// Local inputs against someone who wants out of [inputs] directories: "..", symlinks
// planted before and after intake, a folder swapped for a symlink, a hard link to a file
// outside, a file changed or swapped between intake and upload, a FIFO, a folder, the
// wrong kind of media for a field, a file too large. And what is accepted: the content's
// hash and kind recorded, and the upload body carrying the bytes unchanged.
#include "core/job_spec.hpp"
#include "daemon/job_file.hpp"
#include "daemon/local_inputs.hpp"
#include "tests/support/child_process.hpp"
#include "tests/support/digest.hpp"

#include <boost/json.hpp>
#include <cstring>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <grp.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <pwd.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

namespace {

using namespace klingd;
namespace fs = std::filesystem;
namespace json = boost::json;

const std::string png_bytes = std::string("\x89PNG\r\n\x1a\n", 8) + std::string(5000, 'p');
const std::string mp4_bytes = std::string("\0\0\0\x18"
                                          "ftypisom",
                                          12) +
                              std::string(7000, 'v');

// Whether every folder above dir lets others through (not so when the build tree lies
// under a closed home folder: then the refusals tested are the right answer anyway).
bool open_to_others(const fs::path& dir) {
    for (auto p = fs::canonical(dir); p != p.root_path(); p = p.parent_path())
        if ((fs::status(p).permissions() & fs::perms::others_exec) == fs::perms::none)
            return false;
    return true;
}

class local_inputs : public ::testing::Test {
protected:
    test::temp_dir tmp;
    fs::path media = fs::path(tmp.path()) / "media";
    fs::path outside = fs::path(tmp.path()) / "secret";
    config::inputs_settings cfg;

    void SetUp() override {
        fs::create_directories(media);
        fs::create_directories(outside);
        cfg.directories = {media.string()};
        cfg.max_bytes = 1 << 20;
        ASSERT_EQ(config::resolve_input_directories(cfg), "");
        test::write_file((outside / "key.png").string(),
                         png_bytes); // looks like media, must stay home
        test::write_file((media / "a.png").string(), png_bytes);
        test::write_file((media / "v.mp4").string(), mp4_bytes);
    }

    static std::string url(const fs::path& p) { return "file://" + p.string(); }

    // The job's submitter (none: klingd's own check); groups from the user database
    // unless given (as a socket peer's are).
    std::optional<daemon::submitter> submitter;
    void submitted_by(uid_t uid, std::optional<std::vector<gid_t>> groups = std::nullopt) {
        submitter = daemon::submitter{uid, std::move(groups)};
    }

    // Parses a kling-o1 job naming u as its image, then checks its inputs.
    core::result<std::vector<core::local_input>> intake(const std::string& u,
                                                        const std::string& model = "kling-o1") {
        std::string text =
            model == "kling-o1"
                ? fmt::format(R"({{"model":"kling-o1","params":{{"prompt":"p @Image1",)"
                              R"("image_urls":["{}"]}}}})",
                              u)
                : fmt::format(R"({{"model":"{}","params":{{"prompt":"p","video_url":"{}"}}}})",
                              model, u);
        auto spec = core::parse_job_spec(text, "j");
        if (!spec)
            return spec.error();
        return daemon::check_local_inputs(spec->local_inputs, cfg, submitter);
    }

    static std::string why(const core::result<std::vector<core::local_input>>& r) {
        return r ? std::string("accepted") : r.error().detail;
    }
};

TEST_F(local_inputs, a_file_inside_is_taken_with_its_hash_and_kind_and_uploaded_unchanged) {
    auto r = intake(url(media / "a.png"));
    ASSERT_TRUE(r) << why(r);
    ASSERT_EQ(r->size(), 1u);
    auto& in = r->front();
    EXPECT_EQ(in.path, fs::canonical(media / "a.png").string());
    EXPECT_EQ(in.sha256, test::sha256_hex(png_bytes));
    EXPECT_EQ(in.bytes, static_cast<std::int64_t>(png_bytes.size()));
    EXPECT_EQ(in.mime, "image/png");

    auto body = daemon::upload_body(in, cfg);
    ASSERT_TRUE(body) << body.error().detail;
    auto v = json::parse(*body);
    std::string data(v.at("data_urls").at(0).as_string());
    const std::string prefix = "data:image/png;base64,";
    ASSERT_EQ(data.substr(0, prefix.size()), prefix);
    EXPECT_EQ(test::base64_decode(data.substr(prefix.size())), png_bytes);

    auto video = intake(url(media / "v.mp4"), "kling-o1-video-to-video-edit");
    ASSERT_TRUE(video) << why(video);
    EXPECT_EQ(video->front().mime, "video/mp4");
}

TEST_F(local_inputs, dot_dot_and_other_hosts_are_refused_before_any_file_is_opened) {
    EXPECT_NE(why(intake(url(media) + "/..%2F..%2Fsecret%2Fkey.png")).find("encoded slash"),
              std::string::npos);
    auto dots = url(media) + "/../secret/key.png";
    EXPECT_NE(why(intake(dots)).find("\"..\""), std::string::npos) << why(intake(dots));
    EXPECT_NE(why(intake("file://example.com/etc/passwd")).find("another host"), std::string::npos);
    EXPECT_NE(why(intake("file:relative.png")).find("file://"), std::string::npos);
    EXPECT_NE(why(intake(url(media / "a.png") + "?x=1")).find("query"), std::string::npos);
}

TEST_F(local_inputs, a_path_outside_the_folders_is_refused_even_when_it_is_media) {
    auto r = intake(url(outside / "key.png"));
    EXPECT_NE(why(r).find("outside [inputs] directories"), std::string::npos) << why(r);
    cfg.directories.clear();
    r = intake(url(media / "a.png"));
    EXPECT_NE(why(r).find("directories is empty"), std::string::npos) << why(r);
}

TEST_F(local_inputs, a_symlink_planted_before_intake_that_leads_outside_is_refused) {
    fs::create_symlink(outside / "key.png", media / "link.png");
    auto r = intake(url(media / "link.png"));
    EXPECT_NE(why(r).find("outside [inputs] directories"), std::string::npos) << why(r);
    // A symlinked folder inside that leads out is the same.
    fs::create_directory_symlink(outside, media / "sub");
    r = intake(url(media / "sub" / "key.png"));
    EXPECT_NE(why(r).find("outside [inputs] directories"), std::string::npos) << why(r);
    // A symlink that stays inside is fine: it resolves to a file inside.
    fs::create_symlink(media / "a.png", media / "alias.png");
    EXPECT_TRUE(intake(url(media / "alias.png"))) << why(intake(url(media / "alias.png")));
}

TEST_F(local_inputs, a_hard_link_to_a_file_outside_is_refused) {
    ASSERT_EQ(::link((outside / "key.png").c_str(), (media / "hard.png").c_str()), 0);
    auto r = intake(url(media / "hard.png"));
    EXPECT_NE(why(r).find("hard links"), std::string::npos) << why(r);
}

TEST_F(local_inputs, fifos_folders_empty_and_oversized_files_are_refused) {
    ASSERT_EQ(::mkfifo((media / "pipe.png").c_str(), 0600), 0);
    EXPECT_NE(why(intake(url(media / "pipe.png"))).find("not a regular file"), std::string::npos);
    fs::create_directory(media / "dir.png");
    EXPECT_NE(why(intake(url(media / "dir.png"))).find("not a regular file"), std::string::npos);
    test::write_file((media / "empty.png").string(), "");
    EXPECT_NE(why(intake(url(media / "empty.png"))).find("empty"), std::string::npos);
    cfg.max_bytes = 100;
    EXPECT_NE(why(intake(url(media / "a.png"))).find("inputs.max_bytes"), std::string::npos);
    EXPECT_NE(why(intake(url(media / "missing.png"))).find("cannot be resolved"),
              std::string::npos);
}

TEST_F(local_inputs, the_kind_comes_from_the_content_not_the_name) {
    test::write_file((media / "fake.png").string(), "#!/bin/sh\necho not an image\n");
    auto r = intake(url(media / "fake.png"));
    EXPECT_NE(why(r).find("not an image klingd knows"), std::string::npos) << why(r);
    // A HEIF still in an MP4-like box is no video.
    test::write_file((media / "still.mp4").string(), std::string("\0\0\0\x18"
                                                                 "ftypheic",
                                                                 12) +
                                                         std::string(100, 'h'));
    r = intake(url(media / "still.mp4"), "kling-o1-video-to-video-edit");
    EXPECT_NE(why(r).find("not a video klingd knows"), std::string::npos) << why(r);
    // A video in an image field, an image in the video field.
    r = intake(url(media / "v.mp4"));
    EXPECT_NE(why(r).find("video/mp4 by its content: this field takes an image"), std::string::npos)
        << why(r);
    r = intake(url(media / "a.png"), "kling-o1-video-to-video-edit");
    EXPECT_NE(why(r).find("this field takes a video"), std::string::npos) << why(r);
}

TEST_F(local_inputs, a_file_changed_or_swapped_between_intake_and_upload_is_not_uploaded) {
    auto r = intake(url(media / "a.png"));
    ASSERT_TRUE(r) << why(r);
    auto in = r->front();

    // The same size, other bytes.
    std::string changed = png_bytes;
    changed.back() = 'X';
    test::write_file((media / "a.png").string(), changed);
    auto b = daemon::upload_body(in, cfg);
    ASSERT_FALSE(b);
    EXPECT_NE(b.error().detail.find("SHA-256 differs"), std::string::npos) << b.error().detail;

    // Replaced by a symlink to a file outside with the very same bytes.
    test::write_file((outside / "same.png").string(), png_bytes);
    fs::remove(media / "a.png");
    fs::create_symlink(outside / "same.png", media / "a.png");
    b = daemon::upload_body(in, cfg);
    ASSERT_FALSE(b);
    EXPECT_NE(b.error().detail.find("no longer the file taken in"), std::string::npos)
        << b.error().detail;

    // The folder itself swapped for a symlink to a folder outside holding the same name.
    fs::remove(media / "a.png");
    test::write_file((outside / "a.png").string(), png_bytes);
    fs::rename(media, fs::path(tmp.path()) / "media-old");
    fs::create_directory_symlink(outside, media);
    b = daemon::upload_body(in, cfg);
    ASSERT_FALSE(b);
    EXPECT_NE(b.error().detail.find("no longer the file taken in"), std::string::npos)
        << "the boundary was fixed when the folders were read: " << b.error().detail;

    // Gone.
    fs::remove(media);
    fs::rename(fs::path(tmp.path()) / "media-old", media);
    b = daemon::upload_body(in, cfg);
    ASSERT_FALSE(b);
    EXPECT_NE(b.error().detail.find("no longer the file taken in"), std::string::npos)
        << b.error().detail;
}

TEST_F(local_inputs, a_path_outside_by_its_text_is_refused_without_looking_at_it) {
    auto r = intake("file:///proc/self/fd/3");
    EXPECT_EQ(why(r).find("resolves"), std::string::npos) << "nothing about what it is";
    EXPECT_NE(why(r).find("is outside [inputs] directories"), std::string::npos) << why(r);
    // A sibling whose name starts like the folder's.
    fs::create_directories(media.string() + "-evil");
    test::write_file(media.string() + "-evil/a.png", png_bytes);
    r = intake(url(media.string() + "-evil/a.png"));
    EXPECT_NE(why(r).find("outside"), std::string::npos) << why(r);
}

TEST_F(local_inputs, a_folder_swapped_for_a_symlink_after_start_does_not_move_the_boundary) {
    // The configured folder is resolved at load; later it becomes a link to elsewhere.
    fs::rename(media, fs::path(tmp.path()) / "media-old");
    fs::create_directory_symlink(outside, media);
    auto r = intake(url(media / "key.png"));
    EXPECT_NE(why(r).find("outside [inputs] directories"), std::string::npos) << why(r);
}

TEST_F(local_inputs, a_file_the_submitter_cannot_read_is_refused) {
    if (!open_to_others(media))
        GTEST_SKIP() << media << " is closed to other users: the accepting half cannot run";
    test::write_file((media / "private.png").string(), png_bytes);
    fs::permissions(media / "private.png", fs::perms::owner_read | fs::perms::owner_write);
    submitted_by(65534); // nobody: neither its owner nor in its group, and others may not read
    auto r = intake(url(media / "private.png"));
    EXPECT_NE(why(r).find("the user who submitted the job (uid 65534) may read"), std::string::npos)
        << why(r);
    // Readable by all, in a folder the user cannot enter: refused too.
    fs::create_directories(media / "closed");
    test::write_file((media / "closed/open.png").string(), png_bytes);
    fs::permissions(media / "closed/open.png", fs::perms::others_read, fs::perm_options::add);
    fs::permissions(media / "closed", fs::perms::owner_all);
    r = intake(url(media / "closed/open.png"));
    EXPECT_NE(why(r).find("the user who submitted the job (uid 65534) may read"), std::string::npos)
        << why(r);
    fs::permissions(media / "private.png", fs::perms::others_read, fs::perm_options::add);
    EXPECT_TRUE(intake(url(media / "private.png"))) << "readable by all";
    submitted_by(0);
    fs::permissions(media / "private.png", fs::perms::others_read, fs::perm_options::remove);
    EXPECT_TRUE(intake(url(media / "private.png"))) << "root may read it";
}

TEST_F(local_inputs, a_user_cannot_probe_through_klingd_what_lies_where_it_may_not_look) {
    if (!open_to_others(media))
        GTEST_SKIP() << media << " is closed to other users: every answer would be the same";
    // What klingd could tell a user other than root about paths it resolves with its own
    // rights: whether a link's target exists outside, what is in a folder closed to that
    // user. Every such answer is the same.
    test::write_file((outside / "exists.png").string(), png_bytes);
    fs::create_symlink(outside / "exists.png", media / "to-existing.png");
    fs::create_symlink(outside / "absent.png", media / "to-absent.png");
    fs::create_directories(media / "closed/sub.png");
    test::write_file((media / "closed/there.png").string(), png_bytes);
    ASSERT_EQ(::mkfifo((media / "closed/pipe.png").c_str(), 0644), 0);
    fs::permissions(media / "closed", fs::perms::owner_all);
    submitted_by(65534);
    std::vector<std::string> answers;
    for (auto p : {media / "to-existing.png", media / "to-absent.png", media / "missing.png",
                   media / "closed/there.png", media / "closed/sub.png", media / "closed/pipe.png",
                   media / "closed/absent.png"}) {
        auto r = intake(url(p));
        ASSERT_FALSE(r) << p;
        auto w = why(r);
        // The URL itself is quoted at the front; what follows must not differ.
        answers.push_back(w.substr(w.find(p.string()) + p.string().size()));
    }
    for (auto& a : answers) {
        EXPECT_EQ(a, answers.front());
        EXPECT_NE(a.find("(uid 65534) may read"), std::string::npos) << a;
    }
    // Root (and klingd's own user) get the precise reason.
    submitted_by(0);
    EXPECT_NE(why(intake(url(media / "to-existing.png"))).find("resolves to a path outside"),
              std::string::npos);
    EXPECT_NE(why(intake(url(media / "closed/pipe.png"))).find("not a regular file"),
              std::string::npos);
    fs::permissions(media / "closed", fs::perms::owner_all | fs::perms::others_exec);
}

TEST_F(local_inputs, in_a_user_namespace_only_root_and_klingd_may_name_local_files) {
    // Under systemd's PrivateUsers= every other user reads as 65534: the rights check
    // could not tell users apart. A child in a fresh user namespace (no map written) tries.
    test::write_file((media / "shared.png").string(), png_bytes);
    fs::permissions(media / "shared.png", fs::perms(0644));
    submitted_by(4321, std::vector<gid_t>{
                           4321}); // not klingd's user (root here; 65534 inside the namespace)
    std::string got = test::in_child([&] {
        return ::unshare(CLONE_NEWUSER) != 0 ? std::string("skip")
                                             : why(intake(url(media / "shared.png")));
    });
    if (got == "skip")
        GTEST_SKIP() << "no user namespaces here";
    EXPECT_NE(got.find("user namespace"), std::string::npos) << got;
    // Outside it, the same file and user pass that point (and are accepted when every
    // folder above lets others through).
    EXPECT_EQ(why(intake(url(media / "shared.png"))).find("user namespace"), std::string::npos);
}

TEST_F(local_inputs, a_link_that_leads_out_is_not_followed_beyond_the_folders) {
    // Not even looked up (a dead network mount or an automounter there would hang the
    // check): a path that does not exist outside is refused as outside, not as missing.
    fs::create_symlink("/nonexistent-klingd-mount/x.png", media / "away.png");
    auto r = intake(url(media / "away.png"));
    EXPECT_NE(why(r).find("resolves to a path outside"), std::string::npos) << why(r);
    // Relative links and ".." inside a link's target are resolved as realpath(3) does.
    fs::create_directories(media / "sub");
    fs::create_symlink("../a.png", media / "sub/up.png");
    fs::create_symlink("sub/up.png", media / "chain.png");
    r = intake(url(media / "chain.png"));
    ASSERT_TRUE(r) << why(r);
    EXPECT_EQ(r->front().path, fs::canonical(media / "a.png").string());
    fs::create_symlink("../../../../../../../../etc/passwd", media / "sub/deep.png");
    EXPECT_NE(why(intake(url(media / "sub/deep.png"))).find("outside"), std::string::npos);
    fs::create_symlink("loop2.png", media / "loop1.png");
    fs::create_symlink("loop1.png", media / "loop2.png");
    EXPECT_NE(why(intake(url(media / "loop1.png"))).find("cannot be resolved"), std::string::npos)
        << why(intake(url(media / "loop1.png")));
    fs::create_symlink("a.png/x", media / "through-a-file.png");
    EXPECT_NE(why(intake(url(media / "through-a-file.png"))).find("cannot be resolved"),
              std::string::npos);
}

TEST_F(local_inputs, a_file_or_folder_with_an_acl_is_refused_for_other_users) {
    if (!open_to_others(media))
        GTEST_SKIP() << media << " is closed to other users: the refusal would prove nothing";
    // An ACL can deny what the bits allow (u:4321:---); it is not read, so it is refused.
    test::write_file((media / "acl.png").string(), png_bytes);
    fs::permissions(media / "acl.png", fs::perms(0644));
    auto entry = [](std::uint16_t tag, std::uint16_t perm, std::uint32_t id) {
        std::string e(8, '\0');
        std::memcpy(e.data(), &tag, 2);
        std::memcpy(e.data() + 2, &perm, 2);
        std::memcpy(e.data() + 4, &id, 4);
        return e;
    };
    std::uint32_t version = 2;
    std::string acl(reinterpret_cast<const char*>(&version), 4);
    acl += entry(0x01, 6, ~0u) + entry(0x02, 0, 4321) + entry(0x04, 4, ~0u) + entry(0x10, 4, ~0u) +
           entry(0x20, 4, ~0u);
    if (::setxattr((media / "acl.png").c_str(), "system.posix_acl_access", acl.data(), acl.size(),
                   0) != 0)
        GTEST_SKIP() << "no ACLs on this file system: " << std::strerror(errno);
    submitted_by(4321, std::vector<gid_t>{4321}); // no such user: its groups as a socket gives them
    auto r = intake(url(media / "acl.png"));
    EXPECT_NE(why(r).find("(uid 4321) may read"), std::string::npos) << why(r);
    submitted_by(0);
    EXPECT_TRUE(intake(url(media / "acl.png"))) << "root: klingd's own rights apply";
}

TEST_F(local_inputs, a_trailing_slash_after_a_file_is_refused_as_the_kernel_would) {
    // In the URL it is an empty segment, refused by its text; in a link's target it says
    // "a folder", which a file is not.
    auto r = intake(url(media / "a.png") + "/");
    EXPECT_NE(why(r).find("empty path segments"), std::string::npos) << why(r);
    fs::create_symlink("a.png/", media / "slash.png");
    r = intake(url(media / "slash.png"));
    EXPECT_NE(why(r).find("cannot be resolved: Not a directory"), std::string::npos) << why(r);
    // Folders may be named so on the way: "sub/" and "sub/." in a target lead on.
    fs::create_directories(media / "sub");
    fs::create_symlink(media.string() + "/sub/", media / "dir-link");
    fs::create_symlink("dir-link/./../a.png", media / "through.png");
    r = intake(url(media / "through.png"));
    ASSERT_TRUE(r) << why(r);
    EXPECT_EQ(r->front().path, fs::canonical(media / "a.png").string());
}

TEST_F(local_inputs, a_link_through_a_folder_the_submitter_cannot_search_is_refused) {
    // The real path (media/a.png) is open to all, but the name given passes a folder that
    // user may not search: the kernel would refuse that user, so klingd does too.
    if (!open_to_others(media))
        GTEST_SKIP() << media << " is closed to other users: the accepting half cannot run";
    fs::permissions(media / "a.png", fs::perms(0644));
    fs::create_directories(media / "closed");
    fs::create_symlink("../a.png", media / "closed/way.png");
    fs::permissions(media / "closed", fs::perms(0700));
    submitted_by(65534);
    auto r = intake(url(media / "closed/way.png"));
    EXPECT_NE(why(r).find("(uid 65534) may read"), std::string::npos) << why(r);
    // Through an open folder, the same link is followed.
    fs::permissions(media / "closed", fs::perms(0755));
    EXPECT_TRUE(intake(url(media / "closed/way.png")))
        << why(intake(url(media / "closed/way.png")));
    // A link's own folders count too: a link to a file inside a closed folder.
    fs::create_directories(media / "shut");
    test::write_file((media / "shut/in.png").string(), png_bytes);
    fs::permissions(media / "shut/in.png", fs::perms(0644));
    fs::permissions(media / "shut", fs::perms(0700));
    fs::create_symlink("shut/in.png", media / "to-shut.png");
    r = intake(url(media / "to-shut.png"));
    EXPECT_NE(why(r).find("(uid 65534) may read"), std::string::npos) << why(r);
    fs::permissions(media / "shut", fs::perms(0755));
    EXPECT_TRUE(intake(url(media / "to-shut.png"))) << why(intake(url(media / "to-shut.png")));
}

TEST_F(local_inputs, the_groups_are_the_ones_the_socket_gives_or_else_the_user_database_s) {
    if (::geteuid() != 0)
        GTEST_SKIP() << "needs root to give a file to another group";
    if (!open_to_others(media))
        GTEST_SKIP() << media << " is closed to other users: the accepting half cannot run";
    test::write_file((media / "group.png").string(), png_bytes);
    ASSERT_EQ(::chown((media / "group.png").c_str(), 0, 4000), 0);
    fs::permissions(media / "group.png", fs::perms(0640));
    // A process in group 4000 (the socket says so) may read it; the same uid without it may
    // not, whatever the user database would say.
    submitted_by(4321, std::vector<gid_t>{4321});
    auto r = intake(url(media / "group.png"));
    EXPECT_NE(why(r).find("(uid 4321) may read"), std::string::npos) << why(r);
    submitted_by(4321, std::vector<gid_t>{4321, 4000});
    EXPECT_TRUE(intake(url(media / "group.png"))) << why(intake(url(media / "group.png")));
    // A job file's owner with no entry in the user database: its groups cannot be told, so
    // its local files are refused (not judged by the "others" bits alone).
    submitted_by(4321);
    r = intake(url(media / "a.png"));
    EXPECT_NE(why(r).find("(uid 4321) has no entry in the user database"), std::string::npos)
        << why(r);
}

TEST_F(local_inputs, another_user_s_link_in_a_sticky_folder_open_to_all_is_not_followed) {
    // As the kernel's fs.protected_symlinks: in a /tmp-like folder, a link planted by one
    // user is not followed for another (only for its owner, or when the folder's owner made
    // it).
    if (::geteuid() != 0)
        GTEST_SKIP() << "needs root to give a link to another user";
    if (!open_to_others(media))
        GTEST_SKIP() << media << " is closed to other users: the accepting half cannot run";
    fs::permissions(media / "a.png", fs::perms(0644));
    fs::create_directories(media / "drop");
    fs::permissions(media / "drop", fs::perms(01777));
    fs::create_symlink("../a.png", media / "drop/planted.png");
    ASSERT_EQ(::lchown((media / "drop/planted.png").c_str(), 4321, 4321), 0);
    submitted_by(65534);
    auto r = intake(url(media / "drop/planted.png"));
    EXPECT_NE(why(r).find("(uid 65534) may read"), std::string::npos) << why(r);
    submitted_by(4321, std::vector<gid_t>{4321});
    EXPECT_TRUE(intake(url(media / "drop/planted.png"))) << "its owner follows it";
    fs::permissions(media / "drop", fs::perms(0777));
    submitted_by(65534);
    EXPECT_TRUE(intake(url(media / "drop/planted.png"))) << "not sticky: followed";
}

TEST_F(local_inputs, klingd_running_as_nobody_does_not_take_nobody_s_jobs_for_its_own) {
    // In a user namespace every unmapped user reads as the overflow uid (nobody); should
    // klingd run as nobody, those jobs must still be checked as another user's.
    if (::geteuid() != 0)
        GTEST_SKIP() << "needs root to become nobody";
    if (!open_to_others(media))
        GTEST_SKIP() << media << " is closed to other users";
    fs::create_symlink(outside / "key.png", media / "out.png");
    uid_t overflow = 65534;
    if (std::ifstream f("/proc/sys/kernel/overflowuid"); !(f >> overflow))
        overflow = 65534;
    if (!::getpwuid(overflow))
        GTEST_SKIP() << "uid " << overflow << " has no entry in the user database here";
    submitted_by(overflow);
    std::string got = test::in_child([&] {
        if (::setgroups(0, nullptr) != 0 || ::setgid(overflow) != 0 || ::setuid(overflow) != 0)
            return std::string("skip");
        return why(intake(url(media / "out.png")));
    });
    if (got == "skip")
        GTEST_SKIP() << "cannot become uid " << overflow << " here";
    if (got.find("klingd runs in a user namespace") != std::string::npos)
        GTEST_SKIP() << "the tests run in a user namespace: " << got;
    EXPECT_NE(got.find(fmt::format("(uid {}) may read", overflow)), std::string::npos)
        << "the overflow uid's job got klingd's own precise answer: " << got;
    EXPECT_EQ(got.find("resolves to a path outside"), std::string::npos) << got;
}

TEST_F(local_inputs, a_link_to_the_folder_itself_is_named_so) {
    fs::create_directory_symlink(media, media / "self");
    auto r = intake(url(media / "self"));
    EXPECT_NE(why(r).find("names an [inputs] folder itself"), std::string::npos) << why(r);
}

TEST_F(local_inputs, a_mount_inside_a_folder_is_not_crossed) {
    // A file system mounted inside (a FUSE or NFS mount could hang the check, a bind mount
    // could bring in any folder) ends the walk at its mount point. Mounts are made in a
    // child's own mount namespace.
    fs::create_directories(media / "mnt");
    fs::create_directories(media / "bind");
    test::write_file((outside / "there.png").string(), png_bytes);
    std::string got = test::in_child([&] {
        std::string out;
        if (::unshare(CLONE_NEWNS) != 0 ||
            ::mount("none", "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
            ::mount("tmpfs", (media / "mnt").c_str(), "tmpfs", 0, "size=1m") != 0 ||
            ::mount(outside.c_str(), (media / "bind").c_str(), nullptr, MS_BIND, nullptr) != 0) {
            out = std::string("skip: ") + std::strerror(errno);
        } else {
            test::write_file((media / "mnt/in.png").string(), png_bytes);
            fs::create_symlink(media / "mnt/in.png", media / "to-mnt.png");
            out = why(intake(url(media / "mnt/in.png"))) + "\n" +
                  why(intake(url(media / "bind/there.png"))) + "\n" +
                  why(intake(url(media / "to-mnt.png"))) + "\n" + why(intake(url(media / "a.png")));
            // A mount configured as a folder of its own is taken; nested in another folder
            // it is not (a user who may write in the outer one could have put it there).
            auto as_folders = [&](std::vector<std::string> dirs, const fs::path& file) {
                cfg.directories = std::move(dirs);
                return config::resolve_input_directories(cfg).empty() ? why(intake(url(file)))
                                                                      : "cannot resolve";
            };
            out += "\n" + as_folders({(media / "mnt").string()}, media / "mnt/in.png");
            out +=
                "\n" + as_folders({media.string(), (media / "mnt").string()}, media / "mnt/in.png");
            // A folder below that mount, the mount no longer a folder itself: the mount lies
            // inside the outer folder, where a user who may write could have made it (a
            // FUSE server that never answers), so it is crossed for neither.
            fs::create_directories(media / "mnt/deep");
            test::write_file((media / "mnt/deep/d.png").string(), png_bytes);
            out += "\n" + as_folders({media.string(), (media / "mnt/deep").string()},
                                     media / "mnt/deep/d.png");
            out += "\n" + as_folders({media.string(), (media / "mnt/deep").string()},
                                     media / "mnt/in.png");
            fs::remove(media / "to-mnt.png");
        }
        return out;
    });
    if (got.rfind("skip", 0) == 0)
        GTEST_SKIP() << "cannot mount here: " << got;
    std::vector<std::string> lines;
    for (std::size_t at = 0; at <= got.size();) {
        auto nl = got.find('\n', at);
        lines.push_back(got.substr(at, nl == std::string::npos ? std::string::npos : nl - at));
        at = nl == std::string::npos ? got.size() + 1 : nl + 1;
    }
    ASSERT_EQ(lines.size(), 8u) << got;
    EXPECT_NE(lines[0].find("behind a mount inside its [inputs] folder"), std::string::npos)
        << lines[0];
    EXPECT_NE(lines[1].find("behind a mount"), std::string::npos) << "a bind mount: " << lines[1];
    EXPECT_NE(lines[2].find("behind a mount"), std::string::npos) << "through a link: " << lines[2];
    EXPECT_EQ(lines[3], "accepted") << "the folder itself is fine";
    EXPECT_EQ(lines[4], "accepted") << "a configured folder may be a mount";
    EXPECT_NE(lines[5].find("behind a mount"), std::string::npos)
        << "a folder that is a mount inside another folder: " << lines[5];
    EXPECT_NE(lines[6].find("behind a mount"), std::string::npos)
        << "a mount inside a folder, above a nested one: " << lines[6];
    EXPECT_NE(lines[7].find("behind a mount"), std::string::npos) << lines[7];
}

TEST_F(local_inputs, one_file_in_two_spellings_is_read_once_and_each_spelling_is_recorded) {
    auto spec = core::parse_job_spec(
        fmt::format(R"({{"model":"kling-o1","params":{{"prompt":"p @Image1 @Image2",)"
                    R"("image_urls":["{}","file://localhost{}"]}}}})",
                    url(media / "a.png"), (media / "a.png").string()),
        "j");
    ASSERT_TRUE(spec);
    auto r = daemon::check_local_inputs(spec->local_inputs, cfg);
    ASSERT_TRUE(r) << why(r);
    ASSERT_EQ(r->size(), 2u);
    EXPECT_EQ((*r)[0].sha256, (*r)[1].sha256);
    EXPECT_NE((*r)[0].url, (*r)[1].url);
    cfg.max_files = 1;
    EXPECT_NE(why(daemon::check_local_inputs(spec->local_inputs, cfg)).find("at most 1"),
              std::string::npos);
}

TEST_F(local_inputs, the_hosted_url_is_read_under_file_urls_or_urls_and_must_be_http) {
    EXPECT_EQ(daemon::hosted_url_of(R"({"file_urls":["https://h/x.png"]})"), "https://h/x.png");
    EXPECT_EQ(daemon::hosted_url_of(R"({"urls":["https://h/y.png"]})"), "https://h/y.png");
    EXPECT_EQ(daemon::hosted_url_of(R"({"urls":["file:///etc/passwd"]})"), "");
    EXPECT_EQ(daemon::hosted_url_of(R"({"urls":[]})"), "");
    EXPECT_EQ(daemon::hosted_url_of("not json"), "");
}

TEST(local_refs, are_found_in_stored_params_by_field_with_the_kind_each_field_wants) {
    auto refs = core::local_refs(
        "kling-o1-video-to-video-edit",
        R"({"elements":[{"frontal_image_url":"file:///m/f.png","reference_image_urls":["file:///m/r.png"]}],)"
        R"("image_urls":["https://x/y.png"],"prompt":"file:///m/not-a-field.png","video_url":"file:///m/v.mp4"})");
    ASSERT_EQ(refs.size(), 3u);
    EXPECT_EQ(refs[0].where, "params.video_url");
    EXPECT_EQ(refs[0].want, core::media_want::video);
    EXPECT_EQ(refs[1].path, "/m/f.png");
    EXPECT_EQ(refs[1].want, core::media_want::image);
    EXPECT_EQ(refs[2].where, "params.elements[0].reference_image_urls[0]");
    EXPECT_TRUE(core::local_refs("kling-o1", R"({"image_urls":["https://x/y.png"]})").empty());
    // Another model: any file:// string, either kind; percent-encoding decoded.
    auto other = core::local_refs("other", R"({"a":{"b":["FILE:///m/a%20b.png"]}})");
    ASSERT_EQ(other.size(), 1u);
    EXPECT_EQ(other[0].path, "/m/a b.png");
    EXPECT_EQ(other[0].want, core::media_want::any);
}

} // namespace

TEST(spool_owner, a_job_file_on_a_file_system_that_does_not_keep_owners_may_not_name_local_files) {
    // On NFS (squashed owners, or any owner a remote client sets), SMB, FUSE or FAT a job
    // file's owner does not say who wrote it: its local files are refused, whoever owns
    // it; only local file systems known to keep owners are trusted.
    for (long nfs_smb_fuse_fat : {0x6969L, 0xfe534d42L, 0x65735546L, 0x4d44L, 0x6b414653L}) {
        auto why = daemon::owner_not_trusted(nfs_smb_fuse_fat);
        EXPECT_NE(why.find("not known to keep who wrote a file"), std::string::npos) << why;
    }
    EXPECT_NE(daemon::owner_not_trusted(0x6969).find("type 0x6969"), std::string::npos);
    EXPECT_NE(daemon::owner_not_trusted(std::nullopt).find("cannot be told"), std::string::npos);
    EXPECT_EQ(daemon::owner_not_trusted(0xef53), "") << "ext4";
    EXPECT_EQ(daemon::owner_not_trusted(0x58465342), "") << "XFS";
    EXPECT_EQ(daemon::owner_not_trusted(0x01021994), "") << "tmpfs";
    // Where these tests run (a local disk or tmpfs), the spool's own check lets them by.
    struct statfs here {};
    ASSERT_EQ(::statfs(".", &here), 0);
    EXPECT_NE(daemon::owner_telling_file_system(static_cast<long>(here.f_type)), "")
        << "the tests' own file system (type " << std::hex << here.f_type
        << ") would refuse every spool job with local files";
}
