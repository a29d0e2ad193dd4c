// Local files as inputs, end to end against segmind-sim on both storage backends: the
// file's bytes reach the emulator unchanged, the submit carries the hosted URL, the same
// content is uploaded once, a job naming a file outside [inputs] directories is refused
// with the reason while the others go on, and a restart after an upload does not upload
// that input again.
#include "tests/daemon/daemon_env.hpp"
#include "tests/support/digest.hpp"
#include "tests/support/pg_server.hpp"

#include <filesystem>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>

namespace {

using namespace klingd::test;
namespace json = boost::json;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

// Media bytes that differ by seed (so each file is its own content).
std::string png(int seed, std::size_t size = 30000) {
    std::string b("\x89PNG\r\n\x1a\n", 8);
    for (std::size_t i = 0; b.size() < size; ++i)
        b += static_cast<char>((i * 131 + seed * 7 + (i >> 8)) & 0xff);
    return b;
}
std::string mp4(std::size_t size = 200000) {
    std::string b("\0\0\0\x18"
                  "ftypisom",
                  12);
    for (std::size_t i = 0; b.size() < size; ++i)
        b += static_cast<char>((i * 17 + (i >> 10)) & 0xff);
    return b;
}

// A klingd (not started) that takes local files from DIR/media and uploads to the sim.
std::unique_ptr<daemon_env> with_inputs(daemon_options o) {
    auto env = std::make_unique<daemon_env>(o);
    fs::create_directories(fs::path(env->dir()) / "media");
    auto cfg = read_file(env->config_path());
    cfg += fmt::format("[inputs]\ndirectories = [\"{}/media\"]\nupload_url = \"{}/upload-asset\"\n",
                       env->dir(), env->sim().base_url());
    write_file(env->config_path(), cfg);
    return env;
}

std::string media(daemon_env& env, const std::string& name) {
    return env.dir() + "/media/" + name;
}

std::string image_job_with(const std::string& marker, const std::string& file) {
    return fmt::format(R"({{"model":"kling-o1","params":{{"prompt":"{} restyle @Image1",)"
                       R"("image_urls":["file://{}"]}}}})",
                       marker, file);
}

// The sim's uploads by content hash: how many times each arrived.
std::map<std::string, int> uploads_by_sha(const json::value& stats) {
    std::map<std::string, int> out;
    if (auto* u = stats.as_object().if_contains("uploaded"))
        for (auto& f : u->as_array())
            ++out[str(f, "sha256")];
    return out;
}

// The input URLs the sim's submit with this marker carried.
std::vector<std::string> submitted_inputs(const json::value& stats, const std::string& marker) {
    std::vector<std::string> out;
    for (auto& r : stats.at("requests").as_array())
        if (str(r, "prompt").rfind(marker + " ", 0) == 0)
            for (auto& u : r.at("input_urls").as_array())
                out.emplace_back(u.as_string());
    return out;
}

void local_files_reach_the_api_unchanged_once_each(daemon_options o) {
    auto owned = with_inputs(o);
    auto& env = *owned;
    const auto a = png(1), b = png(2), v = mp4();
    write_file(media(env, "a.png"), a);
    write_file(media(env, "b.png"), b);
    write_file(media(env, "clip.mp4"), v);
    fs::create_symlink("/etc/passwd", media(env, "escape.png"));
    env.start();

    env.drop("one.json", image_job_with("one", media(env, "a.png")));
    env.drop("two.json", image_job_with("two", media(env, "a.png"))); // the same content
    env.drop("vid.json",
             fmt::format(R"({{"model":"kling-o1-video-to-video-edit","params":{{"prompt":"vid )"
                         R"(edit @image1","video_url":"file://{}","image_urls":["file://{}"]}}}})",
                         media(env, "clip.mp4"), media(env, "b.png")));
    env.drop("escape.json", image_job_with("escape", media(env, "escape.png")));
    env.drop("outside.json", image_job_with("outside", env.dir() + "/klingd.toml"));
    // A job file others may write to: its owner cannot be said to have named the files.
    write_file(env.dir() + "/shared.json", image_job_with("shared", media(env, "a.png")));
    fs::permissions(env.dir() + "/shared.json", fs::perms(0664));
    fs::rename(env.dir() + "/shared.json", env.incoming() + "/shared.json");

    // Refused at intake, with the reason, and nothing else disturbed.
    auto rejected = env.dir() + "/spool/rejected/";
    ASSERT_TRUE(eventually(
        [&] {
            return fs::exists(rejected + "escape.json.error") &&
                   fs::exists(rejected + "outside.json.error") &&
                   fs::exists(rejected + "shared.json.error");
        },
        30s));
    EXPECT_NE(read_file(rejected + "escape.json.error").find("outside [inputs] directories"),
              std::string::npos)
        << read_file(rejected + "escape.json.error");
    EXPECT_NE(read_file(rejected + "outside.json.error").find("outside [inputs] directories"),
              std::string::npos);
    EXPECT_NE(read_file(rejected + "shared.json.error").find("mode 0664"), std::string::npos)
        << read_file(rejected + "shared.json.error");
    // Over the socket too: 400 with the reason.
    auto r =
        env.api("POST", "/v1/jobs?id=sock", image_job_with("sock", media(env, "../klingd.toml")));
    EXPECT_EQ(r.status, 400) << r.text;
    EXPECT_NE(r.text.find("\\\"..\\\""), std::string::npos) << r.text;

    ASSERT_TRUE(env.wait_terminal({"one", "two", "vid"}, 120s)) << env.log();
    for (auto id : {"one", "two", "vid"})
        EXPECT_EQ(env.state(id), "completed") << id << ": " << str(env.job(id), "error");

    auto stats = env.sim_stats();
    auto ups = uploads_by_sha(stats);
    EXPECT_EQ(ups[sha256_hex(a)], 1) << "a.png is the input of two jobs: uploaded once";
    EXPECT_EQ(ups[sha256_hex(b)], 1);
    EXPECT_EQ(ups[sha256_hex(v)], 1) << "the video's bytes arrived unchanged";
    EXPECT_EQ(ups.size(), 3u);
    // Each submit carried hosted URLs, never a local path.
    auto host = env.sim().base_url() + "/files/";
    for (auto marker : {"one", "two", "vid"}) {
        auto urls = submitted_inputs(stats, marker);
        ASSERT_FALSE(urls.empty()) << marker;
        for (auto& u : urls)
            EXPECT_EQ(u.rfind(host, 0), 0u) << marker << " sent " << u;
    }
    EXPECT_EQ(submitted_inputs(stats, "one"), submitted_inputs(stats, "two"));
    EXPECT_EQ(submitted_inputs(stats, "vid").size(), 2u);
    // The hosted file is the file.
    auto hosted = submitted_inputs(stats, "one").front();
    auto got = https_request("GET", hosted, "", {}, env.sim().ca_file());
    EXPECT_EQ(got.status, 200);
    EXPECT_EQ(sha256_hex(got.body), sha256_hex(a));
    EXPECT_TRUE(env.running());
}

TEST(inputs, local_files_reach_the_api_unchanged_once_each_on_sqlite) {
    local_files_reach_the_api_unchanged_once_each({});
}

TEST(inputs, local_files_reach_the_api_unchanged_once_each_on_a_cluster_node) {
    daemon_options o;
    o.postgresql = fresh_pg_database();
    o.node = "n1";
    local_files_reach_the_api_unchanged_once_each(o);
}

// An input changed after intake fails its job with the reason; a 4xx of the upload
// fails its job with the API's message; the others complete.
TEST(inputs, content_changed_after_intake_or_refused_by_the_api_fails_only_that_job) {
    daemon_options o;
    o.sim_args = {"--upload-max-bytes", "100000"};
    auto owned = with_inputs(o);
    auto& env = *owned;
    write_file(media(env, "ok.png"), png(3));
    write_file(media(env, "big.png"), png(4, 150000));
    env.start();
    env.api("POST", "/v1/pause");
    env.drop("ok.json", image_job_with("ok", media(env, "ok.png")));
    env.drop("big.json", image_job_with("big", media(env, "big.png")));
    ASSERT_TRUE(eventually(
        [&] { return env.state("ok") == "pending" && env.state("big") == "pending"; }, 30s));
    // Changed while it waited: the same size, other bytes.
    auto changed = png(3);
    changed[100] ^= 0x55;
    write_file(media(env, "ok.png"), changed);
    env.api("POST", "/v1/resume");
    ASSERT_TRUE(env.wait_terminal({"ok", "big"}, 60s)) << env.log();
    EXPECT_EQ(env.state("ok"), "failed");
    EXPECT_NE(str(env.job("ok"), "error").find("changed since it was taken in"), std::string::npos)
        << str(env.job("ok"), "error");
    EXPECT_EQ(env.state("big"), "failed");
    EXPECT_NE(str(env.job("big"), "error").find("refused"), std::string::npos)
        << str(env.job("big"), "error");
    EXPECT_EQ(count(env.sim_stats(), "submit"), 0u) << "nothing was submitted for either";
}

// A kill -9 after an input's upload is recorded: after the restart, that input is not
// uploaded again (the job's second input is, once).
TEST(inputs, a_restart_after_an_upload_does_not_upload_it_again) {
    daemon_options o;
    o.requests_per_minute = 12; // five seconds between requests: time to kill in between
    auto owned = with_inputs(o);
    auto& env = *owned;
    const auto a = png(5), b = png(6);
    write_file(media(env, "a.png"), a);
    write_file(media(env, "b.png"), b);
    env.start();
    env.drop("two-inputs.json",
             fmt::format(R"({{"model":"kling-o1","params":{{"prompt":"pair @Image1 @Image2",)"
                         R"("image_urls":["file://{}","file://{}"]}}}})",
                         media(env, "a.png"), media(env, "b.png")));
    ASSERT_TRUE(eventually([&] { return env.log().find("uploaded (") != std::string::npos; }, 60s))
        << env.log();
    env.kill9();
    EXPECT_EQ(uploads_by_sha(env.sim_stats()).size(), 1u);
    env.start();
    ASSERT_TRUE(env.wait_terminal({"two-inputs"}, 120s)) << env.log();
    EXPECT_EQ(env.state("two-inputs"), "completed") << str(env.job("two-inputs"), "error");
    auto ups = uploads_by_sha(env.sim_stats());
    EXPECT_EQ(ups[sha256_hex(a)], 1);
    EXPECT_EQ(ups[sha256_hex(b)], 1);
}

} // namespace
